"""GLM-4.7-Flash: DeepSeek-V3's MLA attention (interleaved RoPE on qk_rope_head_dim) and
router (sigmoid, correction bias, groups by their two best, renormalised, routed scaling)
with GLM's defaults; which layers are dense comes from `mlp_layer_types` when the config
names it (transformers 5), else from `first_k_dense_replace` (the published config).
The NextN/MTP layer is not used. Reference: transformers' modeling_glm4_moe_lite.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import deepseek_v3


@dataclass
class ModelArgs(deepseek_v3.ModelArgs):
    n_routed_experts: int = 64
    num_experts_per_tok: int = 4
    moe_intermediate_size: int = 1536
    first_k_dense_replace: int = 1
    routed_scaling_factor: float = 1.8
    n_group: int | None = 1
    topk_group: int | None = 1
    rms_norm_eps: float = 1e-5
    mlp_layer_types: list[str] | None = None

    def is_moe_layer(self, layer: int) -> bool:
        if self.mlp_layer_types:
            return self.mlp_layer_types[layer] == "sparse"
        return super().is_moe_layer(layer)


class Model(deepseek_v3.Model):
    Args = ModelArgs
