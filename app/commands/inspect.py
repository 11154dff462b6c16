"""`itamae inspect PATH`: what a model is (converters.facts.inspection), as text or `--json`."""

from __future__ import annotations

import json


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="what a model is: arch, experts, parameters, size, license",
        description="Describe a Hugging Face model folder or a GGUF file from its headers.",
    )
    p.add_argument("path", help="a name from `itamae models`, a model folder, a .gguf, or 'demo'")
    p.add_argument("--json", action="store_true", help="print ModelInfo as JSON")


def _billions(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def run(args) -> int:
    from app.library import model_source
    from converters.facts.inspection import inspect
    from engine.loader import resolve_source

    info = inspect(resolve_source(model_source(args.path)))  # a library name, "demo", a path
    if args.json:
        print(json.dumps(info.to_json()))
        return 0
    lines = [
        f"{info.name}  ({info.format}, {info.arch})",
        f"parameters   {_billions(info.total_params)} total, {_billions(info.active_params)} active per token",
    ]
    if info.is_moe:
        lines.append(
            f"experts      {info.n_experts} routed, {info.experts_per_token} per token, "
            f"{info.n_shared_experts} shared, in {info.n_moe_layers} of {info.n_layers} layers"
        )
    else:
        lines.append(f"layers       {info.n_layers} (dense)")
    bpw = ", ".join(f"{group} {bits:g}" for group, bits in info.bits_per_weight.items())
    lines += [
        f"weights      {info.quant}; bits per weight: {bpw}",
        f"types        {', '.join(f'{t} x{n}' for t, n in sorted(info.dtypes.items()))}",
        f"size         {info.size_bytes / 2**20:.1f} MiB in {len(info.files)} file(s)",
        f"context      {info.context_length} tokens",
        f"license      {info.license or 'unknown (no model card)'}",
    ]
    print("\n".join(lines))
    return 0
