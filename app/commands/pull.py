"""`itamae pull REPO[:QUANT]`: one quant (or the safetensors) into the Hugging Face cache.

What comes down and how (resume, checksums, space check): app/library/downloads.py. The
terminal shows one tqdm bar for the whole download; `--list` shows what the repository
offers, each with its size and whether it fits this machine.
"""

from __future__ import annotations

import json
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "pull",
        help="download one quant (or the safetensors) into the Hugging Face cache",
        description="Download REPO[:QUANT] from the Hugging Face hub; an interrupted pull "
        "resumes where it stopped.",
    )
    p.add_argument("spec", metavar="REPO[:QUANT]", help="e.g. unsloth/Qwen3-30B-A3B-GGUF:Q4_K_M")
    p.add_argument(
        "--list", action="store_true", help="list the quants, sizes and fit; fetch nothing"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _list(spec: str, as_json: bool) -> int:
    from app.library.downloads import parse_spec
    from app.library.hub_search import quants

    repo_id, _ = parse_spec(spec)
    rows = [
        {"quant": c.label, "kind": c.kind, "size_bytes": c.size, "fit": fit.verdict}
        for c, fit in quants(repo_id)
    ]
    if as_json:
        print(json.dumps({"repo": repo_id, "quants": rows}))
    else:
        for row in rows:
            print(f"{repo_id}:{row['quant']:<20} {row['size_bytes'] / 1e9:8.2f} GB  {row['fit']}")
    return 0


def _bar(progress, as_json: bool, total: int):
    from tqdm import tqdm

    bar = tqdm(total=total, unit="B", unit_scale=True, disable=as_json, file=sys.stderr)
    shown = [0]

    def update(p) -> None:
        if bar.total != p.total_bytes:
            bar.reset(total=p.total_bytes)
            shown[0] = 0
        bar.update(p.done_bytes - shown[0])
        shown[0] = p.done_bytes

    progress.listeners.append(update)
    return bar


def run(args) -> int:
    from app.library.downloads import plan, pull
    from app.library.fit import hub_fit
    from app.library.progress import DownloadProgress

    if args.list:
        return _list(args.spec, args.json)
    repo_id, commit, choice = plan(args.spec)
    fit = hub_fit(repo_id, commit, choice)
    if not args.json:
        print(f"itamae: {repo_id}:{choice.label}, {choice.size / 1e9:.2f} GB: {fit.verdict}")
    progress = DownloadProgress()
    bar = _bar(progress, args.json, choice.size)
    try:
        path = pull(args.spec, progress)
    finally:
        bar.close()
    result = {
        "spec": args.spec,
        "quant": progress.label,
        "path": str(path),
        "total_bytes": progress.total_bytes,
        "fit": fit.verdict,
    }
    print(json.dumps(result) if args.json else f"itamae: {progress.label} is at {path}")
    return 0
