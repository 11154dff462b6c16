"""MiniMax-M2 and M2.1: Mixtral's expert names (`block_sparse_moe.experts.{e}.w1/w3/w2`) with
sigmoid routing, a correction bias beside the experts (`block_sparse_moe.e_score_correction_bias`)
that steers the choice, top-k always renormalised; Llama attention with q/k RMSNorm over the
whole projection and RoPE on the first `rotary_dim` of each head. Published in FP8 with
128x128 block scales (read through converters/formats/hf_reader.py, as DeepSeek-V3's).

References: llama.cpp's conversion/minimax.py (`MiniMaxM2Model`) and src/models/minimax-m2.cpp;
transformers' modeling_minimax_m2.py.
"""

from __future__ import annotations

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, ExpertGatingFuncType
from gguf import MODEL_TENSOR as T

from converters.archs.metadata import LLM, ROPE, common_metadata, expert_count, moe_metadata
from converters.archs.spec import ArchSpec
from converters.archs.tensors import ATTENTION, MIXTRAL_EXPERTS, QK_NORM

ARCH = MODEL_ARCH_NAMES[MODEL_ARCH.MINIMAXM2]


def minimax_m2_metadata(config: dict) -> list[tuple[str, object]]:
    def key(template: str) -> str:
        return template.format(arch=ARCH)

    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return [
        *common_metadata(config, ARCH, with_vocab_size=False),
        *moe_metadata(config, ARCH, expert_count(config)),
        (key(LLM.EXPERT_FEED_FORWARD_LENGTH), int(config["intermediate_size"])),
        (key(ROPE.DIMENSION_COUNT), int(config.get("rotary_dim") or head_dim)),
        # sigmoid whatever the config says: transformers does not save scoring_func, and
        # llama.cpp's loader would fall back to softmax
        (key(LLM.EXPERT_GATING_FUNC), int(ExpertGatingFuncType.SIGMOID)),
    ]


SPEC = ArchSpec(
    model_type="minimax_m2",
    gguf_arch=MODEL_ARCH.MINIMAXM2,
    layer_tensors={
        **ATTENTION,
        **QK_NORM,
        "block_sparse_moe.gate.weight": (T.FFN_GATE_INP, ".weight"),
        "block_sparse_moe.e_score_correction_bias": (T.FFN_EXP_PROBS_B, ".bias"),
    },
    expert_prefix="block_sparse_moe.experts",
    expert_projections=MIXTRAL_EXPERTS,
    metadata=minimax_m2_metadata,
    chat_format="minimax",
)
