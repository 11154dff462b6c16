"""`itamae convert SRC -o DEST [--quant RECIPE] [--format gguf|torch]`: converters.conversion.convert
on the command line, with a progress bar on stderr (tqdm) and `--json` for scripts."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

from converters.core.errors import Cancelled


def add_parser(subparsers) -> None:
    from converters.conversion.recipes import DEFAULTS, recipes_for

    p = subparsers.add_parser(
        "convert",
        help="convert a Hugging Face checkpoint to GGUF or the torch format",
        description="Convert a Hugging Face MoE checkpoint (bf16/fp16/fp32/FP8 safetensors) to "
        "a GGUF file llama.cpp runs, or to Itamae's torch format.",
        epilog=" ".join(
            f"{fmt} recipes (default {DEFAULTS[fmt]}): "
            + "; ".join(f"{r.name}: {r.description}" for r in recipes_for(fmt))
            + "."
            for fmt in DEFAULTS
        ),
    )
    p.add_argument("src", help="the model folder (config.json, *.safetensors, tokenizer.json)")
    p.add_argument("-o", "--output", required=True, help="output file (.gguf) or folder (torch)")
    p.add_argument(
        "--quant",
        help=f"recipe: for gguf e.g. {DEFAULTS['gguf']} (default), Q4_K_M, moe-q4; "
        f"for torch {DEFAULTS['torch']} (default), int4, bf16",
    )
    p.add_argument("--format", default="gguf", choices=("gguf", "torch"), dest="fmt")
    p.add_argument("--force", action="store_true", help="replace the output if it exists")
    p.add_argument(
        "--repo-id", default="", help="hub id the model came from (for general.source.url)"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args) -> int:
    from tqdm import tqdm

    from converters.conversion.convert import convert
    from converters.conversion.fallbacks import describe
    from converters.conversion.fallbacks import summary as fallback_summary

    bar = tqdm(total=1000, unit="‰", file=sys.stderr, disable=not sys.stderr.isatty(), leave=False)

    def progress(fraction: float, what: str) -> None:
        bar.n = round(fraction * 1000)
        bar.set_description_str(what[:40], refresh=False)
        bar.refresh()

    cancel = threading.Event()
    try:
        result = convert(
            args.src,
            Path(args.output),
            args.quant,
            args.fmt,
            progress,
            cancel,
            args.force,
            args.repo_id,
        )
    except KeyboardInterrupt:
        cancel.set()
        raise Cancelled("Interrupted; no output was written.") from None
    finally:
        bar.close()
    summary = {
        "output": str(result.path),
        "recipe": result.recipe,
        "format": args.fmt,
        "seconds": round(result.seconds, 3),
        "size_bytes": result.size_bytes,
        "fallbacks": {
            **fallback_summary(result.fallbacks),
            "tensors": [
                {"name": f.tensor, "wanted": f.wanted, "got": f.got, "row_length": f.row_length}
                for f in result.fallbacks
            ],
        },
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"wrote {result.path} ({result.size_bytes / 2**20:.1f} MiB, {result.recipe}) in {result.seconds:.1f} s"
        )
        if note := describe(fallback_summary(result.fallbacks)):
            print(note)
    return 0
