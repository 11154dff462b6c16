"""DeepSeek-V4 (Flash, Pro): published under DeepSeek's own tensor names (`layers.N.attn.wq_a`,
`layers.N.ffn.experts.E.w1`, `hc_head_fn`), FP8 projections with e8m0 block scales and FP4
routed experts (tests/fixtures/deepseek_v4.py describes the layout).

Per layer, attention is sliding-window only (compress ratio 0), compressed sparse (CSA,
ratio 4: a compressor plus a lightning indexer over the compressed entries) or heavily
compressed (HCA, ratio 128), from `compress_ratios` as published; the first
`num_hash_layers` MoE layers route by a fixed token -> experts table (`tid2eid`), the rest
by sqrt(softplus) scores with a correction bias. The residual is `hc_mult` hyper-connection
streams. The MTP layer (`mtp.0.*`) is left out, as llama.cpp's converter does by default.

GGUF: llama.cpp's arch "deepseek4" (conversion/deepseek.py, `DeepseekV4Model`); the gguf
package (0.19.0) has no MODEL_ARCH for it, so the name is given as a string. Itamae does
not yet convert V4 to GGUF; the torch engine runs it (engine/torch/models/deepseek_v4.py).

References: transformers' models/deepseek_v4; llama.cpp's conversion/deepseek.py and
src/models/deepseek4.cpp.
"""

from __future__ import annotations

from collections import Counter

from gguf import MODEL_ARCH

from converters.archs.spec import ArchSpec

SLIDING, CSA, HCA = (
    "sliding_attention",
    "compressed_sparse_attention",
    "heavily_compressed_attention",
)
RATIO_TO_TYPE = {0: SLIDING, 4: CSA, 128: HCA}  # transformers' fold of compress_ratios


DEFAULT_RATES = {CSA: 4, HCA: 128}  # transformers' compress_rates when a config names none


def attention_schedule(config: dict) -> list[tuple[str, int]]:
    """Each decoder layer's attention and compression ratio: from the published
    `compress_ratios` (0: sliding window only, 4: CSA, any other: HCA, as DeepSeek's
    inference code and llama.cpp's deepseek4 decide; released checkpoints use 0, 4 and 128),
    or from transformers' `layer_types` and `compress_rates` where a config was saved by it."""
    n = int(config.get("num_hidden_layers") or 0)
    if config.get("layer_types"):
        rates = {**DEFAULT_RATES, **(config.get("compress_rates") or {})}
        return [(kind, rates.get(kind, 0)) for kind in list(config["layer_types"])[:n]]
    ratios = list(config.get("compress_ratios") or [])[:n]
    if len(ratios) != n or any(type(r) is not int or r < 0 for r in ratios):
        raise ValueError(
            f"compress_ratios {ratios} must give each of the {n} layers a ratio (0, 4 or 128)"
        )
    return [(SLIDING if r == 0 else CSA if r == 4 else HCA, r) for r in ratios]


def attention_types(config: dict) -> list[str]:
    """Each decoder layer's attention kind (transformers' `layer_types` names)."""
    return [kind for kind, _ in attention_schedule(config)]


def hash_layers(config: dict) -> int:
    return sum(hashed_layers(config))


def hashed_layers(config: dict) -> list[bool]:
    """Per layer: are its experts chosen by the token -> experts table (`tid2eid`)?"""
    n = int(config.get("num_hidden_layers") or 0)
    if config.get("mlp_layer_types"):
        return [kind == "hash_moe" for kind in list(config["mlp_layer_types"])[:n]]
    return [i < int(config.get("num_hash_layers", 3)) for i in range(n)]


def facts(config: dict) -> dict:
    """What inspect reports beyond the common counts."""
    return {
        "attention_layers": dict(sorted(Counter(attention_types(config)).items())),
        "hash_routed_layers": hash_layers(config),
    }


SPEC = ArchSpec(
    model_type="deepseek_v4",
    gguf_arch=MODEL_ARCH.DEEPSEEK2,  # unused until V4 converts; its arch is gguf_arch_name
    gguf_arch_name="deepseek4",
    layer_tensors={},
    expert_prefix="ffn.experts",
    expert_projections={},
    metadata=lambda config: [],
    recognise_gguf=lambda metadata: True,  # the only family llama.cpp calls deepseek4
    chat_format="deepseek",
    extra_facts=facts,
    converts_to_gguf=False,
)
