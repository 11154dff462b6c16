"""DeepSeek-V3.2 (-Exp): DeepSeek-V3 with DeepSeek Sparse Attention. Each MLA layer has a
lightning indexer that picks, per query, the `index_topk` past positions attention reads
(engine/torch/sparse_attention.py); routing, MoE and MLA projections are V3's.
References: DeepSeek-V3.2-Exp report (github.com/deepseek-ai/DeepSeek-V3.2-Exp);
transformers' modeling_deepseek_v32.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention import MLAttention
from ..rope import Rotary
from ..sparse_attention import LightningIndexer
from . import deepseek_v3


@dataclass
class ModelArgs(deepseek_v3.ModelArgs):
    index_topk: int = 2048
    index_head_dim: int = 128
    index_n_heads: int = 64


class Model(deepseek_v3.Model):
    Args = ModelArgs

    def build_attention(self, i: int) -> MLAttention:
        attn = super().build_attention(i)
        a, w, p = self.args, self.w, f"model.layers.{i}.self_attn.indexer"
        attn.indexer = LightningIndexer(
            wq_b=w.linear(f"{p}.wq_b"),
            wk=w.linear(f"{p}.wk"),
            k_norm=w.get(f"{p}.k_norm.weight"),
            k_norm_bias=w.get(f"{p}.k_norm.bias"),
            weights_proj=w.get(f"{p}.weights_proj.weight", torch.float32),
            n_heads=a.index_n_heads,
            head_dim=a.index_head_dim,
            top_k=a.index_topk,
            rotary=self.half_split_rotary(),
        )
        return attn

    def half_split_rotary(self) -> Rotary:
        """The indexer's RoPE: MLA's frequencies, applied to halves rather than pairs."""
        a = self.args
        rotary = Rotary(a.rope, a.qk_rope_head_dim, a.max_position_embeddings, interleaved=False)
        return rotary.to(self.device)
