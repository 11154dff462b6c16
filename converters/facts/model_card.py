"""Read everything a model says about itself: its card, license files, config and GGUF metadata.

A model's self-description is spread over several places, and each is read as it is
written, nothing inferred:

- `README.md`: the Hugging Face model card, YAML front matter between `---` lines
  (fields as the hub documents them, https://huggingface.co/docs/hub/model-cards:
  `license`, `license_name`, `license_link`, `datasets`, `base_model`, `language`,
  `tags`, `library_name`, `model_name`) followed by Markdown text;
- license files beside the weights (`LICENSE`, `LICENSE-MODEL`, `LICENSE-CODE`, `COPYING`,
  ...; DeepSeek ships the code and model licenses as two files);
- `config.json` (`_name_or_path`, `auto_map` naming modeling code shipped in the folder);
- a GGUF file's `general.*` keys (gguf-py's `Keys.General`; llama.cpp's docs/gguf.md).

`read_model_card(path)` takes a model folder or a `.gguf` file and returns a `ModelCard`.
Nothing here judges; converters/openness.py turns a `ModelCard` into sourced facts and
the GGUF writer copies the card's fields into `general.*`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from converters.core.errors import BadModelFile, ItamaeError
from converters.formats.detect import is_gguf_file
from converters.formats.gguf_header import read_contents

# The hub's own rule (huggingface_hub repocard.py REGEX_YAML_BLOCK, read as utf-8-sig): a
# `---` line at the very top (after a byte-order mark or blank lines), YAML, a `---` line;
# lines may end in \n, \r\n or \r, and the block may be empty.
_EOL = r"(?:\r\n|\r|\n)"
FRONT_MATTER = re.compile(
    rf"\A\ufeff?\s*---[ \t]*{_EOL}(?:(.*?){_EOL})??---[ \t]*(?:{_EOL}|\Z)", re.DOTALL
)
README_NAMES = ("README.md", "README.MD", "readme.md", "README")
LICENSE_PREFIXES = ("LICENSE", "LICENCE", "COPYING")
MAX_TEXT_BYTES = 2 << 20  # model cards are tens of KB; a larger README is not read past 2 MiB
HUB = "https://huggingface.co/"
# The whole openness card of the source model, as JSON, in a converted GGUF (written by the
# converter through converters.facts.openness.openness_json): general.* has no keys for training
# code, data descriptions or reports, and a converted file should keep them.
OPENNESS_KEY = "itamae.openness"


@dataclass
class ModelCard:
    """What the files of one model state about it. Empty fields mean "not stated"."""

    path: Path
    readme_name: str = ""  # file name of the model card, "" when there is none
    front_matter: dict = field(default_factory=dict)
    front_matter_error: str = ""  # why the front matter could not be read, if it could not
    text: str = ""  # the card's Markdown body (after the front matter)
    text_offset_lines: int = 0  # lines before the body, so line numbers match the file
    license_files: dict[str, str] = field(default_factory=dict)  # file name -> text
    config: dict = field(default_factory=dict)
    gguf_general: dict[str, object] = field(default_factory=dict)  # "general.license" -> value
    files: list[str] = field(default_factory=list)  # names of the files in the model folder

    @property
    def has_card(self) -> bool:
        return bool(self.readme_name)

    def meta(self, key: str):
        """A front matter field, None when absent or empty."""
        value = self.front_matter.get(key)
        return None if value in (None, "", [], {}) else value

    def meta_list(self, key: str) -> list[str]:
        return as_list(self.front_matter.get(key))

    # The fields the GGUF writer carries into general.* (see card_metadata.py).
    @property
    def license_id(self) -> str:
        return str(self.meta("license") or self.gguf_general.get("general.license") or "")

    @property
    def license_name(self) -> str:
        return str(self.meta("license_name") or self.gguf_general.get("general.license.name") or "")

    @property
    def license_link(self) -> str:
        return str(self.meta("license_link") or self.gguf_general.get("general.license.link") or "")

    @property
    def datasets(self) -> list[str]:
        return self.meta_list("datasets") or gguf_indexed(self.gguf_general, "dataset", "name")

    @property
    def base_models(self) -> list[str]:
        return self.meta_list("base_model") or gguf_indexed(self.gguf_general, "base_model", "name")

    @property
    def languages(self) -> list[str]:
        return self.meta_list("language") or as_list(self.gguf_general.get("general.languages"))

    @property
    def tags(self) -> list[str]:
        return self.meta_list("tags") or as_list(self.gguf_general.get("general.tags"))

    @property
    def name(self) -> str:
        index = self.front_matter.get("model-index")
        indexed = index[0].get("name") if isinstance(index, list) and index else None
        return str(
            self.meta("model_name")
            or indexed
            or self.gguf_general.get("general.name")
            or self.config.get("_name_or_path")
            or ""
        )

    def text_lines(self) -> list[tuple[int, str]]:
        """(line number in the README file, line) for the card's body."""
        return [
            (self.text_offset_lines + i + 1, line) for i, line in enumerate(self.text.splitlines())
        ]


def as_list(value) -> list[str]:
    if value in (None, ""):
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v not in (None, "")]
    return [str(value)]


def gguf_indexed(general: dict, group: str, leaf: str) -> list[str]:
    """`general.dataset.{i}.name` for i < `general.dataset.count` (gguf-py's indexed keys)."""
    count = general.get(f"general.{group}.count")
    if not isinstance(count, int):
        return []
    out = []
    for i in range(count):
        value = general.get(f"general.{group}.{i}.{leaf}") or general.get(
            f"general.{group}.{i}.repo_url"
        )
        if value:
            out.append(str(value))
    return out


def hub_url(repo_or_url: str) -> str:
    return repo_or_url if "://" in repo_or_url else HUB + repo_or_url


def split_front_matter(readme: str) -> tuple[dict, str, int, str]:
    """README text -> (front matter, body, lines before the body, error or ""): the one
    front-matter parser (card_metadata.py reads through it too)."""
    match = FRONT_MATTER.match(readme)
    if not match:
        return {}, readme, 0, ""
    body = readme[match.end() :]
    offset = len(readme[: match.end()].splitlines())
    try:
        loaded = yaml.safe_load(match.group(1) or "")
    except yaml.YAMLError as e:
        # A malformed card is not a reason to refuse a model; the card says what it could not read.
        return {}, body, offset, f"the YAML front matter does not parse ({e.__class__.__name__})"
    if loaded is None:
        return {}, body, offset, ""
    if not isinstance(loaded, dict):
        return {}, body, offset, "the YAML front matter is not a mapping of fields"
    return loaded, body, offset, ""


def _read_text(path: Path) -> str:
    with path.open("rb") as f:
        data = f.read(MAX_TEXT_BYTES)
    return data.decode("utf-8", errors="replace")


def _is_license_file(name: str) -> bool:
    return name.upper().startswith(LICENSE_PREFIXES)


def read_folder(folder: Path) -> ModelCard:
    card = ModelCard(path=folder, files=sorted(p.name for p in folder.iterdir()))
    readme = next((folder / n for n in README_NAMES if (folder / n).is_file()), None)
    if readme is not None:
        card.readme_name = readme.name
        meta, body, offset, error = split_front_matter(_read_text(readme))
        card.front_matter, card.text = meta, body
        card.text_offset_lines, card.front_matter_error = offset, error
    for name in card.files:
        if _is_license_file(name) and (folder / name).is_file():
            card.license_files[name] = _read_text(folder / name)
    config = folder / "config.json"
    if config.is_file():
        try:
            loaded = json.loads(_read_text(config))
        except json.JSONDecodeError as e:
            raise BadModelFile(
                f"{config} is not valid JSON ({e}).", "Re-download the model."
            ) from e
        card.config = loaded if isinstance(loaded, dict) else {}
    return card


def read_gguf_general(path: Path) -> dict[str, object]:
    """The `general.*` key/value pairs of a GGUF file, and Itamae's carried openness card,
    through the project's header reader (vocabularies skipped: 0.06 s for a 151,936-token
    vocabulary where gguf-py's GGUFReader took 20 s); the tensors are not read."""
    metadata = read_contents(path).metadata
    return {k: v for k, v in metadata.items() if k.startswith("general.") or k == OPENNESS_KEY}


def read_model_card(path: str | Path) -> ModelCard:
    """A model folder (HF or Itamae torch format) or a `.gguf` file -> its ModelCard."""
    path = Path(path).expanduser()
    if path.is_dir():
        return read_folder(path)
    if path.is_file() and is_gguf_file(path):  # by content: Ollama's blobs have no suffix
        card = ModelCard(path=path, files=[path.name])
        card.gguf_general = read_gguf_general(path)
        return card
    if path.is_file():
        raise ItamaeError(
            f"{path} is neither a model folder nor a .gguf file.",
            "Point at the folder that holds config.json, or at a .gguf file.",
        )
    raise ItamaeError(f"No model at {path}.", "Check the path.")
