"""`load(path, **options) -> TorchBackend`: the native engine behind engine/types.py's Backend.

Options (all optional):
    device         "auto" | "cpu" | "cuda" | "cuda:N"   (auto: CUDA if present)
    dtype          "auto" | "float32" | "bfloat16" | "float16"
                   (auto: float32 for a float32 hub checkpoint on the CPU, else bfloat16)
    threads        CPU threads for torch
    expert_budget  fraction (<= 1) or bytes (> 1) of routed experts kept on the fast tier
    cache_policy   "lru" | "frequency" | "static"
    on_miss        "auto" (cost model) | "move" | "compute"
    expert_usage   recorded expert_counts (list of lists, or a JSON file holding them) for the
                   static hot set
    context_length positions the KV cache may hold (default, and at most: the model's
                   maximum, its config's max_position_embeddings)
    expert_quant   None | "int8" | "int4": quantize a hub checkpoint's experts as they load
                   (the torch format is already quantized)
    preload        True (default): when all experts fit the budget, copy them in at load
    compile        "auto" (default) | True | False: decode's routed experts through the
                   kernel torch.compile builds (engine/torch/compiled.py) and each decoder
                   layer's decode step as one compiled graph (compiled_step.py); "auto"
                   compiles both for experts of 1 MiB and more, True always;
                   ITAMAE_COMPILE=0 turns both off, ITAMAE_COMPILE_STEP=0 the step alone
    prefetch       "off" (default) | "next_layer": during decode, layer i+1's router applied
                   to layer i's output predicts its experts and the missing ones are copied
                   into the fast tier ahead of need (engine/torch/prefetch.py); it runs
                   layer by layer, so compile=True's compiled decode step is left out
    overlap        "auto" (default: on with CUDA) | "on" | "off": decode computes the missed
                   experts on the CPU while the fast tier's run (engine/torch/overlap.py)
    uniform_routing_seed  benchmarks of expert placement only: route every token to experts
                   drawn uniformly at random (the output is then meaningless)
Unknown options are ignored and listed in `info.extra["ignored_options"]`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

from converters.core.errors import ContextTooLong, ItamaeError
from converters.core.model_info import ModelInfo
from converters.facts.inspection import inspect
from converters.formats.torch_format import is_torch_format
from engine.constrained import grammar_for
from engine.prompting import PromptPlan
from engine.types import Event, GenerationRequest

from .generate import Generator
from .models import model_class
from .overlap import overlap_mode
from .prefetch import prefetch_mode
from .text import ModelText
from .transformer import PlacementOptions
from .weights import open_weights

KNOWN = {"device", "dtype", "threads", "expert_budget", "cache_policy", "on_miss",
         "expert_usage", "context_length", "expert_quant", "uniform_routing_seed", "preload",
         "compile", "prefetch", "overlap"}  # fmt: skip
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ItamaeError("device=cuda was asked for, but torch sees no CUDA GPU.",
                          "Use device=cpu, or install a CUDA build of torch.")  # fmt: skip
    return torch.device(name)


def _dtype(name: str, folder: Path, config: dict, device: torch.device) -> torch.dtype:
    if name != "auto":
        if name not in DTYPES:
            raise ItamaeError(
                f"Unknown dtype {name!r}.", f"Choose one of: auto, {', '.join(DTYPES)}."
            )
        return DTYPES[name]
    stored = config.get("torch_dtype") or config.get("dtype")
    if device.type == "cpu" and stored == "float32" and not is_torch_format(folder):
        return torch.float32
    return torch.bfloat16


def _usage(value) -> list[list[int]] | None:
    if value is None or isinstance(value, list):
        return value
    data = json.loads(Path(value).read_text())
    return (
        data.get("expert_counts", data.get("stats", {}).get("expert_counts"))
        if isinstance(data, dict)
        else data
    )


def _context_length(asked, args) -> int:
    """The context to load with. More than the model's maximum is refused here, at load: a
    silent cap made every longer prompt fail later with a message about the capped size."""
    limit = args.max_position_embeddings
    if not asked:
        return limit
    if int(asked) > limit:
        raise ContextTooLong(
            f"context_length {int(asked)} is more than this model's maximum of {limit} "
            "positions (max_position_embeddings in its config.json).",
            f"Load it with context_length {limit} or less.",
        )
    return int(asked)


class TorchBackend:
    def __init__(self, path: Path, **options):
        self.ignored = sorted(set(options) - KNOWN)
        device = _device(str(options.get("device", "auto")))
        if options.get("threads"):
            torch.set_num_threads(int(options["threads"]))
        weights = open_weights(path, torch.float32, device)  # dtype fixed below
        config = weights.config
        weights.dtype = _dtype(str(options.get("dtype", "auto")), path, config, device)
        weights.expert_quant = options.get("expert_quant")
        if weights.expert_quant not in (None, "int8", "int4"):
            raise ItamaeError(
                f"Unknown expert_quant {weights.expert_quant!r}.", "Use int8 or int4."
            )
        cls = model_class(str(config.get("model_type", "")))
        self.args = cls.Args.from_dict(config)
        context = _context_length(options.get("context_length"), self.args)
        placement = PlacementOptions(
            expert_budget=options.get("expert_budget"),
            policy=options.get("cache_policy", "lru"),
            on_miss=options.get("on_miss", "auto"),
            expert_usage=_usage(options.get("expert_usage")),
            uniform_routing_seed=options.get("uniform_routing_seed"),
            preload=bool(options.get("preload", True)),
            compile=options.get("compile", "auto"),
            prefetch=prefetch_mode(options.get("prefetch")),
            overlap=overlap_mode(options.get("overlap", "auto")),
        )
        self.model = cls(self.args, weights, placement)
        self.text = ModelText(path, config)
        self.generator = Generator(self.model, self.text, context)
        self.info = self._info(path, weights)
        self._lock = threading.Lock()

    def _info(self, path: Path, weights) -> ModelInfo:
        """What inspect says of the folder (the one HF/torch-format ModelInfo builder), with
        what only the running engine knows: its context, its compute dtype, its cache."""
        m = self.model
        info = inspect(path)
        info.name = path.name
        info.context_length = self.generator.context_length
        if info.format == "hf":
            info.quant = str(weights.dtype).replace("torch.", "")
        info.extra = {"engine": "torch", "device": str(m.device), "dtype": str(m.dtype),
                      "ignored_options": self.ignored,
                      "expert_cache_bytes": m.cache.budget_bytes if m.cache else 0,
                      "compiled_experts": m.fused is not None,
                      "compiled_step": getattr(m, "step", None) is not None,
                      "compile_s": m.compile_s}  # fmt: skip
        return info

    def prefetch_report(self) -> dict:
        """Next-layer prefetch's counters since load (prefetch.py), for benchmarks."""
        p = self.model.cache.prefetch_counters if self.model.cache else None
        if p is None or getattr(self.model, "prefetch", None) is None:  # (DeepSeek-V4: none)
            return {}
        return {"prefetch_prediction_hit_rate": p.prediction_hit_rate,
                "prefetched": p.prefetched, "prefetch_predicted": p.predicted}  # fmt: skip

    def stream(
        self, req: GenerationRequest, cancel: threading.Event | None = None
    ) -> Iterator[Event]:
        with self._lock:
            yield from self.generator.stream(req, cancel)

    def tokenize(self, text: str) -> list[int]:
        return self.text.encode(text)

    def prompt_plan(self, req: GenerationRequest) -> PromptPlan:
        """The prompt text (the model's chat template) and its constraint."""
        return self.generator.prompt_plan(req)

    def prompt_tokens(self, req: GenerationRequest) -> list[int]:
        """The very tokens stream(req) would run first (chat template, tools included)."""
        return self.generator.encode(req, self.generator.prompt_plan(req))

    def check_request(self, req: GenerationRequest) -> None:
        """Raise ItamaeError for what this request asks and cannot be done (a tool choice
        the template's format cannot force, a schema llguidance cannot enforce)."""
        plan = self.generator.prompt_plan(req)
        if plan.constraint is not None:
            grammar_for(plan.constraint, self.generator.special_token_id)

    def close(self) -> None:
        if self.model is not None and self.model.cache is not None:
            self.model.cache.join_all()  # no prefetch copy left writing into freed memory
            self.model.cache.copier.close()
        if getattr(self.model, "overlap", None) is not None:
            self.model.overlap.close()
        self.model = None
        self.generator = None


def load(path: str | Path, **options) -> TorchBackend:
    return TorchBackend(Path(path), **options)
