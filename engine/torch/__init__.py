"""The native torch engine: expert-sparse MoE inference with tiered expert placement.

`engine.load(path, engine="torch")` reaches `engine.torch.backend.load`. One model file per
architecture lives in `models/` (named by HF `model_type`); the pieces they share (attention,
RoPE, the KV cache, the MoE block, quantized linears, the expert cache) live beside them.
"""
