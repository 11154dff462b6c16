"""One file per architecture, named by the HF `model_type`; found by name (mlx-lm style)."""

from __future__ import annotations

import importlib

from converters.core.errors import UnsupportedArchitecture

SUPPORTED = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3", "llama")
ALIASES = {"mistral": "llama", "kimi_k2": "deepseek_v3"}  # same computation, other names


def model_class(model_type: str):
    name = ALIASES.get(model_type, model_type)
    if name not in SUPPORTED:
        raise UnsupportedArchitecture(
            f"The torch engine does not run {model_type or 'this'} models "
            f"(it runs {', '.join(SUPPORTED)}).",
            "Convert the model to GGUF and use the llama.cpp engine (--engine llamacpp).",
        )
    return importlib.import_module(f"engine.torch.models.{name}").Model
