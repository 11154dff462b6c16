"""What a model is, as `itamae inspect` reports it and the rest of the program reads it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class ModelInfo:
    path: Path
    format: str  # "hf" (safetensors folder) | "gguf" | "torch" (Itamae's torch format) | "remote"
    arch: str  # HF model_type spelling: "mixtral", "qwen3_moe", "deepseek_v3", "llama", ...
    name: str = ""
    total_params: int = 0
    active_params: int = (
        0  # parameters that work for one token (routed experts counted top-k times)
    )
    n_layers: int = 0
    n_experts: int = 0  # routed experts per MoE layer; 0 for a dense model
    experts_per_token: int = 0
    n_shared_experts: int = 0
    n_moe_layers: int = 0
    n_linear_attention_layers: int = 0  # layers with a recurrent state instead of a KV cache
    context_length: int = 0
    vocab_size: int = 0
    dtypes: dict[str, int] = field(default_factory=dict)  # tensor type -> number of tensors
    quant: str = ""  # recipe or dominant tensor type, e.g. "Q8_0", "moe-q4", "bf16"
    bits_per_weight: dict[str, float] = field(default_factory=dict)  # group -> bpw
    size_bytes: int = 0
    license: str = ""
    files: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    def to_json(self) -> dict:
        data = asdict(self)
        data["path"] = str(self.path)
        data["is_moe"] = self.is_moe
        return data
