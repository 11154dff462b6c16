"""Nemotron-H (nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B): a hybrid whose every layer is ONE
mixer behind a pre-norm, chosen by `hybrid_override_pattern` (one character per layer,
"M" Mamba-2, "*" softmax attention, "E" MoE, "-" dense MLP; transformers 5 reads it into
`layers_block_type` as linear_attention / full_attention / moe / mlp). Attention and MoE
are never in the same layer, and the layers with no attention keep no KV cache: a Mamba-2
layer keeps a conv state and an SSM state per sequence instead. The MoE layers route with
DeepSeek-V3's sigmoid scores, correction bias, group-limited top-k, renormalisation and
`routed_scaling_factor`; their experts and one shared expert are two-matrix ReLU^2 FFNs
(up, down; no gate). Published with the model under `backbone.` (embeddings, norm_f) and
the experts one tensor per expert, as transformers 5 also saves it.

GGUF conversion is not written yet: llama.cpp runs it as `nemotron_h_moe`
(conversion/nemotron.py's NemotronHModel; src/models/nemotron-h-moe.cpp).

References: transformers' models/nemotron_h (configuration_nemotron_h.py: the pattern and
its mapping; modeling_nemotron_h.py: the mixers and the router).
"""

from __future__ import annotations

from gguf import MODEL_ARCH

from converters.archs.spec import FULL_ATTENTION, LINEAR_ATTENTION, ArchSpec

# hybrid_override_pattern's characters, as transformers' NemotronHConfig maps them
PATTERN = {"M": LINEAR_ATTENTION, "*": FULL_ATTENTION, "E": "moe", "-": "mlp"}
# older names of the same kinds that layers_block_type may carry (remap_legacy_layer_types)
LEGACY = {"mamba": LINEAR_ATTENTION, "attention": FULL_ATTENTION}


def layer_types(config: dict) -> list[str]:
    """One kind per layer: the config's layers_block_type, else its hybrid_override_pattern."""
    given = config.get("layers_block_type") or config.get("layer_types")
    if isinstance(given, list):
        return [LEGACY.get(str(t), str(t)) for t in given]
    pattern = config.get("hybrid_override_pattern")
    if isinstance(pattern, str):
        return [PATTERN.get(c, c) for c in pattern]
    return []


def is_moe_layer(config: dict, bid: int) -> bool:
    types = layer_types(config)
    return bid < len(types) and types[bid] == "moe"


def metadata(config: dict) -> list[tuple[str, object]]:  # pragma: no cover - not converted
    return []


SPEC = ArchSpec(
    model_type="nemotron_h",
    gguf_arch=MODEL_ARCH.NEMOTRON_H_MOE,
    layer_tensors={},
    expert_prefix="mixer.experts",
    expert_projections={},
    metadata=metadata,
    chat_format="chatml",
    layer_types=layer_types,
    moe_layer=is_moe_layer,
    converts_to_gguf=False,
)
