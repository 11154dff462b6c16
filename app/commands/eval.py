"""`itamae eval --model QUANTIZED --reference SOURCE [--text FILE] [--json]`: what quantizing cost.

Runs both models over a calibration text (by default the bilingual one that ships with
Itamae) and reports mean and 99th-percentile KL divergence, top-1 agreement, perplexity
of both, and per MoE layer how often tokens are routed to the same experts. The report
is stored as JSON beside the model (`<model>.quality.json`), where the Models tab reads it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from converters.core.errors import ItamaeError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="what quantization cost: KL divergence, top-1 agreement, perplexity, expert routing",
        description="Compare a quantized model with its source on a calibration text.",
    )
    p.add_argument("--model", required=True, help="the quantized model: a .gguf or a folder")
    p.add_argument(
        "--reference",
        required=True,
        help="its source: the Hugging Face folder (torch engine) or a higher-precision .gguf",
    )
    p.add_argument("--text", help="a UTF-8 text file (default: the bundled bilingual text)")
    p.add_argument("--window", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: automatic)")
    p.add_argument("--no-save", action="store_true", help="do not write <model>.quality.json")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _read_text(path: str) -> str:
    file = Path(path).expanduser()
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ItamaeError(f"No text file at {file}.", "Check the --text path.") from e
    except UnicodeDecodeError as e:
        raise ItamaeError(f"{file} is not UTF-8 text.", "Save it as UTF-8 and try again.") from e


def _progress(done: int, total: int) -> None:
    print(f"\reval: window {done}/{total}", end="" if done < total else "\n", file=sys.stderr)


def _print_table(report: dict) -> None:
    from converters.conversion.fallbacks import describe

    quant = f"{report['model_quant']}, " if report.get("model_quant") else ""
    print(f"model      {report['model']} ({quant}{report['model_size_bytes'] / 2**20:.1f} MiB)")
    print(f"reference  {report['reference']} ({report['reference_size_bytes'] / 2**20:.1f} MiB)")
    if note := describe(report.get("model_quant_fallbacks")):
        print(f"fallbacks  {note}")
    print(f"text       {report['text']}: {report['scored_positions']} positions scored")
    print(f"KL mean    {report['kl_mean']:.6f}")
    print(f"KL p99     {report['kl_p99']:.6f}")
    print(f"top-1      {report['top1_agreement']:.2%}")
    print(f"perplexity {report['ppl_model']:.4f} (reference {report['ppl_reference']:.4f})")
    if report["expert_agreement"]:
        for layer, share in zip(report["moe_layers"], report["expert_agreement"], strict=True):
            print(f"experts    layer {layer:3d}: {share:.2%} of routed slots the same")
    elif report.get("routing_note"):
        print(f"experts    not measured: {report['routing_note']}")
    else:
        print("experts    no MoE routing to compare (a dense model)")


def run(args) -> int:
    from app.library import model_source
    from engine.evaluate import evaluate, save_report
    from engine.loader import resolve_source

    if args.window < 16:
        raise ItamaeError(f"--window {args.window} is too small.", "Use at least 16 tokens.")
    text = _read_text(args.text) if args.text else None
    # a library name becomes its path; the scorer reads the format from the content
    model = resolve_source(model_source(args.model))
    reference = resolve_source(model_source(args.reference))
    report = evaluate(
        model,
        reference,
        text=text,
        window=args.window,
        threads=args.threads,
        progress=None if args.json else _progress,
        text_label=args.text or "",
    )
    if not args.no_save:
        report["saved_to"] = str(save_report(report, model))
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        _print_table(report)
        if "saved_to" in report:
            print(f"saved      {report['saved_to']}")
    return 0
