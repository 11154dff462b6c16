"""OLMoE: RMSNorm over the whole q and k projections (not per head), optional clip_qkv,
softmax top-k without renormalisation by default. Reference: transformers' modeling_olmoe.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import qwen2_moe


@dataclass
class ModelArgs(qwen2_moe.ModelArgs):
    num_experts: int = 64
    num_experts_per_tok: int = 8
    rms_norm_eps: float = 1e-5
    clip_qkv: float | None = None

    def is_moe_layer(self, layer: int) -> bool:
        return True


class Model(qwen2_moe.Model):
    Args = ModelArgs

    def build_attention(self, i: int):
        p = f"model.layers.{i}.self_attn"
        return self.gqa(
            i, q_norm=self.w.get(f"{p}.q_norm.weight"), k_norm=self.w.get(f"{p}.k_norm.weight"),
            qk_norm_per_head=False, clip_qkv=self.args.clip_qkv,
        )  # fmt: skip

    def build_shared(self, i: int):
        return None, None
