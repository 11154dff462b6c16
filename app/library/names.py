"""One name per model, the same in `--model`, the API's model id and the UI.

Each place names its models its own way (scan.py); names are made unique across places
in a fixed order, Itamae's own first (the demo is `demo`), then the Hugging Face cache, LM
Studio, Ollama and added paths: the first model to claim a name keeps it, a later one is
`<source>/<name>` (then `-2`, `-3`...). The order of the places and of the files in them is
sorted, so a name stays the same from one start to the next while the files stay.

`resolve` turns what a person typed into something engine.load takes: a path, a URL or
`demo` pass through (engine.loader.resolve_source handles them), a library name becomes
its path. The app resolves before it calls the engine, so the engine never learns about
other tools' folders.
"""

from __future__ import annotations

from pathlib import Path

from converters.core.errors import ItamaeError

from .scan import Found

SOURCE_ORDER = ("itamae", "hf-cache", "lmstudio", "ollama", "added")


def unique_names(found: list[Found]) -> list[Found]:
    """Each model once, with a name no other has. A file found through two places is
    listed once, in the first; only Ollama's tags of one blob stay side by side."""
    taken: set[str] = set()
    seen: dict[Path, str] = {}  # file -> the place it was first found in
    out = []
    for item in sorted(found, key=lambda f: SOURCE_ORDER.index(f.source)):
        real = item.path.resolve()
        if real in seen and not item.source == seen[real] == "ollama":
            continue  # found again (a link, an added path); Ollama's tags of one blob stay
        seen.setdefault(real, item.source)
        name = item.name
        if name in taken:
            name = f"{item.source}/{item.name}"
            number = 2
            while name in taken:
                name, number = f"{item.source}/{item.name}-{number}", number + 1
        taken.add(name)
        item.name = name
        out.append(item)
    return out


def passes_through(text: str) -> bool:
    """What engine.loader.resolve_source takes as it is: a URL, `demo`, an existing path,
    or what can only be a path (absolute, `~`, `./`), so a missing one is reported as such."""
    if text.startswith(("http://", "https://", "~", "./", "../")) or text == "demo":
        return True
    path = Path(text)
    return path.is_absolute() or path.exists()


def pick(found: list[Found], name: str) -> Found:
    match = next((f for f in found if f.name == name), None)
    if match is None:
        close = [f.name for f in found if name.lower() in f.name.lower()][:5]
        raise ItamaeError(
            f"No model named {name!r} on this machine, and no file or folder by that name.",
            (f"Did you mean {', '.join(close)}? " if close else "")
            + "`itamae models` lists every model's name; a folder or .gguf path works too.",
        )
    if match.kind == "projector":
        raise ItamaeError(
            f"{name} is a multimodal projector (mmproj), not a chat model.",
            "Load the language model it belongs to; `itamae models` lists them.",
        )
    return match
