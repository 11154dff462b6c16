"""`itamae models [--json]`: every model on this machine under the name that loads it.

Itamae's models folder and the bundled demo, the Hugging Face cache, LM Studio's and
Ollama's folders (read, never written) and added paths (app/library).
"""

from __future__ import annotations

import json


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "models",
        help="every model on this machine: Itamae's, the HF cache, LM Studio, Ollama, added",
        description="List the models on this machine with the name --model takes.",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list")


def _row(item: dict) -> str:
    experts = f"{item['experts']}x" if item["experts"] else "dense"
    if item["kind"] == "projector":
        experts = "projector"
    size = item["size_bytes"] / 1e9
    what = item["architecture"] or item["problem"][:40] or "?"
    return (
        f"{item['name']:<48} {item['source']:<9} {item['format']:<5} {what:<14} "
        f"{experts:<9} {item['quantization'] or '-':<8} {size:7.2f} GB  {item['path']}"
    )


def run(args) -> int:
    from app import library
    from app.settings import AppPaths, SettingsFile

    settings_file = SettingsFile(AppPaths.default())
    settings = settings_file.load()
    entries = library.scan(settings_file.models_dir(settings), settings.added_paths)
    items = [e.to_json() for e in entries]
    if args.json:
        print(json.dumps(items, ensure_ascii=False))
        return 0
    header = f"{'NAME':<48} {'SOURCE':<9} {'FMT':<5} {'ARCH':<14} {'EXPERTS':<9} {'QUANT':<8} {'SIZE':>10}  PATH"
    print("\n".join([header, *(_row(item) for item in items)]))
    return 0
