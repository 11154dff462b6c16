"""DeepSeek-V4 (Flash, Pro): published under DeepSeek's own tensor names (`layers.N.attn.wq_a`,
`layers.N.ffn.experts.E.w1`, `hc_head_fn`), FP8 projections with e8m0 block scales and FP4
routed experts (tests/fixtures/deepseek_v4.py describes the layout).

Per layer, attention is sliding-window only (compress ratio 0), compressed sparse (CSA,
ratio 4: a compressor plus a lightning indexer over the compressed entries) or heavily
compressed (HCA, ratio 128), from `compress_ratios` as published; the first
`num_hash_layers` MoE layers route by a fixed token -> experts table (`tid2eid`), the rest
by sqrt(softplus) scores with a correction bias. The residual is `hc_mult` hyper-connection
streams. The MTP layer (`mtp.0.*`) is left out, as llama.cpp's converter does by default.

GGUF: llama.cpp's arch "deepseek4" (conversion/deepseek.py, `DeepseekV4Model`), written as
its converter writes it: FP8 weights dequantized and stored Q8_0, BF16 ones BF16, F32 ones
F32 whatever the requested type (its `tensor_force_quant`; Itamae's F32 recipe alone makes
everything F32, the exact reference), the FP4 experts repacked bit for bit into ggml's
MXFP4 (`repack_mxfp4_blocks`), the hash tables as I32, the hash layers' unused router bias
dropped. The gguf package (0.19.0) has neither the arch nor most of its tensor kinds and
keys, so those are spelled here as llama.cpp's gguf-py (vendored in llama-cpp-python
0.3.36, gguf-py/gguf/constants.py) spells them.
The torch engine runs it as published (engine/torch/models/deepseek_v4.py). The chat
encoding DeepSeek publishes as Python (encoding/encoding_dsv4.py) is rendered by
deepseek_v4_chat.jinja, also written into its GGUFs; its calls are DSML `tool_calls` blocks
(engine/tool_calls/deepseek_dsml.py).

References: transformers' models/deepseek_v4; llama.cpp's conversion/deepseek.py and
src/models/deepseek4.cpp (what its loader reads).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from gguf import MODEL_ARCH
from gguf import MODEL_TENSOR as T

from converters.archs.metadata import ATTN, LLM, ROPE, common_metadata, moe_metadata
from converters.archs.spec import ArchSpec
from converters.archs.tensors import MIXTRAL_EXPERTS

ARCH = "deepseek4"
SLIDING, CSA, HCA = (
    "sliding_attention",
    "compressed_sparse_attention",
    "heavily_compressed_attention",
)
RATIO_TO_TYPE = {0: SLIDING, 4: CSA, 128: HCA}  # transformers' fold of compress_ratios
SQRT_SOFTPLUS = 4  # llama.cpp's ExpertGatingFuncType.SQRTSOFTPLUS (not in gguf 0.19.0)

# llama.cpp's names where gguf 0.19.0 has no MODEL_TENSOR (its constants.py TENSOR_NAMES)
ROOT = {
    "embed.weight": (T.TOKEN_EMBD, ".weight"),
    "norm.weight": (T.OUTPUT_NORM, ".weight"),
    "head.weight": (T.OUTPUT, ".weight"),
    "hc_head_fn": ("output_hc_fn", ".weight"),
    "hc_head_base": ("output_hc_base", ".weight"),
    "hc_head_scale": ("output_hc_scale", ".weight"),
}
_COMPRESSOR = {  # the compressor's and the indexer's own compressor: `{part}` -> GGUF
    "ape": "ape",
    "wkv.weight": "kv",
    "wgate.weight": "gate",
    "norm.weight": "norm",
}
LAYER = {
    "attn_norm.weight": (T.ATTN_NORM, ".weight"),
    "ffn_norm.weight": (T.FFN_NORM, ".weight"),
    "attn.attn_sink": (T.ATTN_SINKS, ".weight"),
    "attn.wq_a.weight": (T.ATTN_Q_A, ".weight"),
    "attn.q_norm.weight": (T.ATTN_Q_A_NORM, ".weight"),
    "attn.wq_b.weight": (T.ATTN_Q_B, ".weight"),
    "attn.wkv.weight": ("blk.{bid}.attn_kv", ".weight"),
    "attn.kv_norm.weight": (T.ATTN_KV_A_NORM, ".weight"),  # llama.cpp's ATTN_KV_NORM
    "attn.wo_a.weight": ("blk.{bid}.attn_output_a", ".weight"),
    "attn.wo_b.weight": ("blk.{bid}.attn_output_b", ".weight"),
    **{
        f"attn.compressor.{part}": (f"blk.{{bid}}.attn_compressor_{gguf}", ".weight")
        for part, gguf in _COMPRESSOR.items()
    },
    **{
        f"attn.indexer.compressor.{part}": (f"blk.{{bid}}.indexer_compressor_{gguf}", ".weight")
        for part, gguf in _COMPRESSOR.items()
    },
    "attn.indexer.wq_b.weight": (T.INDEXER_ATTN_Q_B, ".weight"),
    "attn.indexer.weights_proj.weight": (T.INDEXER_PROJ, ".weight"),
    **{
        f"hc_{site}_{part}": (f"blk.{{bid}}.hc_{site}_{part}", ".weight")
        for site in ("attn", "ffn")
        for part in ("fn", "base", "scale")
    },
    "ffn.gate.weight": (T.FFN_GATE_INP, ".weight"),
    "ffn.gate.bias": (T.FFN_EXP_PROBS_B, ".bias"),
    "ffn.gate.tid2eid": ("blk.{bid}.ffn_gate_tid2eid", ".weight"),
    "ffn.shared_experts.w1.weight": (T.FFN_GATE_SHEXP, ".weight"),
    "ffn.shared_experts.w2.weight": (T.FFN_DOWN_SHEXP, ".weight"),
    "ffn.shared_experts.w3.weight": (T.FFN_UP_SHEXP, ".weight"),
}

# Keys gguf 0.19.0 lacks, as llama.cpp's Keys spells them
KEY = {
    "output_group_count": "{arch}.attention.output_group_count",
    "output_lora_rank": "{arch}.attention.output_lora_rank",
    "compress_ratios": "{arch}.attention.compress_ratios",
    "compress_rope_freq_base": "{arch}.attention.compress_rope_freq_base",
    "hc_count": "{arch}.hyper_connection.count",
    "hc_sinkhorn_iterations": "{arch}.hyper_connection.sinkhorn_iterations",
    "hc_epsilon": "{arch}.hyper_connection.epsilon",
    "hash_layer_count": "{arch}.hash_layer_count",
}


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


def compress_ratios(config: dict) -> list[int]:
    """The published per-layer ratios (the MTP layer's last), or transformers' fold back."""
    if config.get("compress_ratios"):
        return [int(r) for r in config["compress_ratios"]]
    by_type = {kind: ratio for ratio, kind in RATIO_TO_TYPE.items()}
    return [by_type[kind] for kind in attention_types(config)]


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


def gguf_facts(metadata: dict) -> dict:
    """`facts` from a GGUF header: the per-layer ratios and the hash layer count are keys
    of llama.cpp's deepseek4 (the MTP layer's ratio last, beyond block_count)."""

    def key(name: str):
        return metadata.get(KEY[name].format(arch=ARCH))

    return facts(
        {
            "num_hidden_layers": int(metadata.get(f"{ARCH}.block_count") or 0),
            "compress_ratios": [int(r) for r in key("compress_ratios") or []],
            "num_hash_layers": int(key("hash_layer_count") or 0),
        }
    )


def metadata(config: dict) -> list[tuple[str, object]]:
    """llama.cpp's DeepseekV4Model.set_gguf_parameters, key for key."""

    def key(template: str) -> str:
        return template.format(arch=ARCH)

    n_layers, limit = int(config["num_hidden_layers"]), float(config["swiglu_limit"])
    meta = common_metadata(config, ARCH, with_vocab_size=False)
    meta += moe_metadata(config, ARCH, int(config["n_routed_experts"]))
    meta += [
        (key(LLM.EXPERT_GATING_FUNC), SQRT_SOFTPLUS),
        (key(ROPE.DIMENSION_COUNT), int(config["qk_rope_head_dim"])),
        (key(ATTN.Q_LORA_RANK), int(config["q_lora_rank"])),
        (key(ATTN.SLIDING_WINDOW), int(config["sliding_window"])),
        (key(LLM.EXPERT_FEED_FORWARD_LENGTH), int(config["moe_intermediate_size"])),
        (key(LLM.EXPERT_SHARED_COUNT), int(config["n_shared_experts"])),
        (key(LLM.EXPERT_WEIGHTS_SCALE), float(config["routed_scaling_factor"])),
        (key(LLM.EXPERT_WEIGHTS_NORM), bool(config["norm_topk_prob"])),
        (key(LLM.SWIGLU_CLAMP_EXP), [limit] * n_layers),
        (key(LLM.SWIGLU_CLAMP_SHEXP), [limit] * n_layers),
        (key(ATTN.Indexer.HEAD_COUNT), int(config["index_n_heads"])),
        (key(ATTN.Indexer.KEY_LENGTH), int(config["index_head_dim"])),
        (key(ATTN.Indexer.TOP_K), int(config["index_topk"])),
        (key(KEY["output_group_count"]), int(config["o_groups"])),
        (key(KEY["output_lora_rank"]), int(config["o_lora_rank"])),
        (key(KEY["compress_ratios"]), compress_ratios(config)),
        (key(KEY["compress_rope_freq_base"]), float(config["compress_rope_theta"])),
        (key(KEY["hc_count"]), int(config["hc_mult"])),
        (key(KEY["hc_sinkhorn_iterations"]), int(config["hc_sinkhorn_iters"])),
        (key(KEY["hc_epsilon"]), float(config["hc_eps"])),
        (key(KEY["hash_layer_count"]), hash_layers(config)),
        (key(LLM.EMBEDDING_LENGTH_OUT), int(config["hidden_size"]) * int(config["hc_mult"])),
    ]
    return meta


def drops(config: dict, bid: int | None, rest: str) -> bool:
    """Hash layers route by their table; llama.cpp's converter drops their router bias."""
    return rest == "ffn.gate.bias" and bid is not None and bid < hash_layers(config)


def required(config: dict, bid: int) -> tuple:
    kinds = (T.ATTN_NORM, T.FFN_NORM, T.ATTN_Q_A, T.ATTN_Q_B, "blk.{bid}.attn_kv")
    return (*kinds, "blk.{bid}.attn_output_a", "blk.{bid}.attn_output_b")


SPEC = ArchSpec(
    model_type="deepseek_v4",
    gguf_arch=MODEL_ARCH.DEEPSEEK2,  # not read: the arch is gguf_arch_name
    gguf_arch_name=ARCH,
    layer_tensors=LAYER,
    root_tensors=ROOT,
    expert_prefix="ffn.experts",
    expert_projections=MIXTRAL_EXPERTS,  # w1 gate, w3 up, w2 down
    metadata=metadata,
    recognise_gguf=lambda metadata: True,  # the only family llama.cpp calls deepseek4
    chat_format="deepseek",
    # V4 ships its chat encoding as Python and no template; this renders what it renders
    chat_template=Path(__file__).with_name("deepseek_v4_chat.jinja").read_text(encoding="utf-8"),
    extra_facts=facts,
    gguf_extra_facts=gguf_facts,
    required_layer_kinds=required,
    gguf_drops=drops,
    gguf_types_by_source=True,
)
