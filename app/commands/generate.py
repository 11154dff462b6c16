"""`itamae generate`: one completion from any engine, streamed as text or returned as JSON.

JSON shape (DESIGN.md, "Command line"): {"text", "prompt_tokens", "tokens", "finish_reason",
"stats"}; a failed generation adds "error" and exits 1.
"""

from __future__ import annotations

import json
import sys


def add_engine_options(p) -> None:
    """Options shared by generate and bench: which engine and how to place the model."""
    p.add_argument(
        "--model", required=True, help="a name from `itamae models`, a folder, a .gguf, or 'demo'"
    )
    p.add_argument("--engine", default="auto", choices=["auto", "torch", "llamacpp", "remote"])
    p.add_argument("--threads", type=int, help="CPU threads")
    p.add_argument("--context-length", type=int, help="positions the KV cache may hold")
    p.add_argument("--experts-per-token", type=int, help="route each token to K experts")
    torch_opts = p.add_argument_group("torch engine")
    torch_opts.add_argument("--device", help="auto | cpu | cuda")
    torch_opts.add_argument("--dtype", help="auto | float32 | bfloat16 | float16")
    torch_opts.add_argument(
        "--expert-budget", type=float, help="fraction (<= 1) or bytes of experts on the fast tier"
    )
    torch_opts.add_argument("--cache-policy", choices=["lru", "frequency", "static"])
    torch_opts.add_argument("--on-miss", choices=["auto", "move", "compute"])
    torch_opts.add_argument(
        "--expert-usage", help="JSON with recorded expert_counts (static policy)"
    )
    torch_opts.add_argument(
        "--compile", choices=["auto", "on", "off"],
        help="decode through torch.compile'd code: the routed experts' kernel and each "
        "layer's decode step (auto, the default: for experts of 1 MiB and more; on: always)",
    )  # fmt: skip
    torch_opts.add_argument(
        "--prefetch", choices=["off", "next_layer"],
        help="copy layer i+1's predicted experts to the fast tier while layer i runs",
    )  # fmt: skip
    torch_opts.add_argument(
        "--overlap", choices=["auto", "on", "off"],
        help="compute missed experts on the CPU while the GPU runs the resident ones",
    )  # fmt: skip
    torch_opts.add_argument(
        "--uniform-routing-seed", type=int,
        help="benchmarks only: send tokens to uniformly random experts (meaningless output)",
    )  # fmt: skip


def load_options(args) -> dict:
    names = {
        "threads": "threads", "context_length": "context_length",
        "experts_per_token": "experts_per_token", "device": "device", "dtype": "dtype",
        "expert_budget": "expert_budget", "cache_policy": "cache_policy",
        "on_miss": "on_miss", "expert_usage": "expert_usage",
        "uniform_routing_seed": "uniform_routing_seed", "compile": "compile",
        "prefetch": "prefetch", "overlap": "overlap",
    }  # fmt: skip
    return {
        key: getattr(args, attr)
        for attr, key in names.items()
        if getattr(args, attr, None) is not None
    }


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="one completion: text, token ids and stats",
        description="Generate one completion with the torch or llama.cpp engine.",
    )
    add_engine_options(p)
    p.add_argument("--prompt", required=True, help="the prompt (a user message with --chat)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    p.add_argument("--system", help="a system message (with --chat)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def build_request(args):
    from engine.types import GenerationRequest, Message, SamplingParams

    sampling = SamplingParams(
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
        repeat_penalty=args.repeat_penalty, seed=args.seed, max_tokens=args.max_tokens,
        stop=list(args.stop),
    )  # fmt: skip
    if args.chat:
        messages = [Message("system", args.system)] if args.system else []
        messages.append(Message("user", args.prompt))
        return GenerationRequest(messages=messages, sampling=sampling,
                                 experts_per_token=args.experts_per_token)  # fmt: skip
    return GenerationRequest(prompt=args.prompt, sampling=sampling,
                             experts_per_token=args.experts_per_token)  # fmt: skip


def run(args) -> int:
    from app import library
    from engine.types import FinalEvent

    backend = library.load(args.model, engine=args.engine, **load_options(args))
    pieces, final = [], None
    try:
        for event in backend.stream(build_request(args)):
            if isinstance(event, FinalEvent):
                final = event
            else:
                pieces.append(event.text)
                if not args.json:
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
    finally:
        backend.close()
    result = {
        "text": "".join(pieces),
        "prompt_tokens": final.prompt_token_ids,
        "tokens": final.token_ids,
        "finish_reason": final.finish_reason,
        "stats": final.stats.to_json(),
        "engine": backend.info.extra.get("engine", args.engine),
    }
    if final.error:
        result["error"] = final.error
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        s = final.stats
        print(file=sys.stderr)
        print(f"[{final.finish_reason}] {s.prompt_tokens} prompt + {s.completion_tokens} tokens, "
              f"TTFT {s.ttft_s:.2f}s, prefill {s.prefill_tps:.1f} tok/s, decode {s.decode_tps:.1f} tok/s"
              + (f"; error: {final.error}" if final.error else ""), file=sys.stderr)  # fmt: skip
    return 1 if final.finish_reason == "error" else 0
