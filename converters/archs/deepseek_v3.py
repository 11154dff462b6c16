"""DeepSeek-V3 / R1 (FP8 as published) and Kimi-K2 (the same computation, 384 experts):
DeepSeek-V2's layout with sigmoid expert scores, an `e_score_correction_bias`, groups ranked
by the sum of their two best experts (`noaux_tc`) and a routed scaling factor. The
multi-token-prediction layer (model.layers.{num_hidden_layers}) is skipped, as llama.cpp does.

References: llama.cpp's conversion/deepseek.py (`DeepseekV3Model`); transformers'
modeling_deepseek_v3.py.
"""

from __future__ import annotations

from dataclasses import replace

from converters.archs import deepseek_v2

SPEC = replace(
    deepseek_v2.SPEC,
    model_type="deepseek_v3",
    metadata=deepseek_v2.deepseek_metadata(default_scoring="sigmoid", default_topk="noaux_tc"),
    aliases=("kimi_k2", "kimi_k25"),  # kimi_k25: Kimi-K2.5, the language model in text_config
    # GLM-4.7-Flash is deepseek2 with sigmoid routing too; its GGUF carries nextn blocks
    recognise_gguf=lambda metadata: (
        deepseek_v2.routes_with_sigmoid(metadata)
        and not metadata.get("deepseek2.nextn_predict_layers")
    ),
)
