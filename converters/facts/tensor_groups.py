"""The tensor groups an MoE recipe treats differently, and per-group parameter counts.

Routed experts, shared experts, attention, embeddings (token embedding and output head)
and the rest (norms, routers including the shared expert's gate, dense FFNs). Active
parameters per token count the routed experts `experts_per_token / n_experts` times and
everything else once.
"""

from __future__ import annotations

import re
from collections import Counter

from converters.archs.tensors import split_layer_name
from converters.core.model_info import ModelInfo

GROUPS = ("experts", "shared", "attention", "embeddings", "other")


def hf_group(name: str) -> str:
    _, rest = split_layer_name(name)
    if re.search(r"(^|\.)experts\.\d+\.", rest) or re.search(
        r"(^|\.)experts\.(gate_up|down)_proj", rest
    ):
        return "experts"
    if "shared_expert" in rest and "shared_expert_gate" not in rest:
        return "shared"
    if "self_attn." in rest or "attention." in rest or re.match(r"layers\.\d+\.attn\.", name):
        return "attention"  # DeepSeek-V4 publishes `layers.N.attn.*`, `embed`, `head`
    if name in ("model.embed_tokens.weight", "lm_head.weight", "embed.weight", "head.weight",
                "model.embeddings.weight"):  # fmt: skip
        return "embeddings"
    return "other"


def gguf_group(name: str) -> str:
    if "gate_inp" in name or name.endswith("_exps.scale"):
        # routers (ffn_gate_inp, ffn_gate_inp_shexp) and Gemma 4's per-expert output scales
        # (ffn_down_exps.scale, the router's per_expert_scale) are not expert weights
        return "other"
    if "_exps." in name:
        return "experts"
    if "_shexp." in name:
        return "shared"
    if ".attn_" in name:
        return "attention"
    if name.startswith(("token_embd.", "output.")):
        return "embeddings"
    return "other"


def summarise_tensors(info: ModelInfo, tensors: list[tuple[str, int, int, str]]) -> None:
    """tensors: (group, elements, stored bytes, type name) -> params, bpw, dtypes."""
    elements, stored = Counter(), Counter()
    for group, n, nbytes, _ in tensors:
        elements[group] += n
        stored[group] += nbytes
    info.total_params = sum(elements.values())
    routed = elements["experts"]
    share = info.experts_per_token / info.n_experts if info.n_experts else 1.0
    info.active_params = info.total_params - routed + round(routed * share)
    info.dtypes = dict(Counter(t for *_, t in tensors))
    info.bits_per_weight = {g: round(8 * stored[g] / elements[g], 3) for g in GROUPS if elements[g]}
