"""Model configuration read from HF `config.json`, keeping Hugging Face's own field names.

Following mlx-lm's `ModelArgs.from_dict`: a dataclass names the fields an architecture
uses, `from_dict` keeps those and ignores the rest. RoPE settings come normalised from the
architecture registry (converters/archs/rope.py reads both spellings published configs use).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from converters import archs
from converters.archs.rope import rope_parameters
from converters.core.errors import BadModelFile


@dataclass
class RopeParams:
    theta: float = 10000.0
    rope_type: str = "default"  # default | linear | llama3 | yarn
    factor: float | None = None
    original_max_position_embeddings: int | None = None
    # YaRN (DeepSeek-V2/V3 spell these in rope_scaling)
    beta_fast: float | None = None
    beta_slow: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None
    truncate: bool = True
    # llama3
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    partial_rotary_factor: float = 1.0

    @classmethod
    def from_config(cls, config: dict, default_theta: float = 10000.0) -> RopeParams:
        params = rope_parameters(config)
        rope_type = params["rope_type"]
        theta = params["rope_theta"] or default_theta
        original = params.get("original_max_position_embeddings") or config.get(
            "original_max_position_embeddings"
        )
        if rope_type in ("llama3", "yarn") and original is None:
            original = config.get("max_position_embeddings")
        names = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in params.items() if k in names and v is not None}
        kept.update(theta=float(theta), rope_type=rope_type)
        kept["original_max_position_embeddings"] = original
        kept.setdefault("partial_rotary_factor", float(config.get("partial_rotary_factor") or 1.0))
        return cls(**kept)


@dataclass
class BaseArgs:
    """Fields every decoder-only architecture here has (HF names, HF defaults)."""

    model_type: str = ""
    hidden_size: int = 4096
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    vocab_size: int = 32000
    intermediate_size: int = 11008
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    head_dim: int | None = None
    hidden_act: str = "silu"
    attention_bias: bool = False
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    rope: RopeParams = field(default_factory=RopeParams)

    # transformers' default rope_theta for the architecture when config.json omits it
    default_theta = 10000.0

    @classmethod
    def from_dict(cls, config: dict) -> BaseArgs:
        try:
            args = cls._from_dict(config)
        except (TypeError, ValueError, ZeroDivisionError, AttributeError, OverflowError) as e:
            # config.json comes from a stranger: a wrong type or an impossible value is a
            # damaged file, not a crash
            raise BadModelFile(
                f"config.json does not fit {cls.__name__}: {type(e).__name__}: {e}.",
                "Re-download config.json, or check that it belongs to this model.",
            ) from e
        return args

    @classmethod
    def _from_dict(cls, config: dict) -> BaseArgs:
        names = {f.name for f in dataclasses.fields(cls)} - {"rope"}
        config = dict(archs.normalise_config(config))
        # The registry knows which field a family's checkpoints name the expert count in
        # (transformers 5 saves Qwen3-MoE's num_experts as num_local_experts): fill the
        # field this dataclass uses, by its HF name.
        spec = archs.spec_for_config(config)
        count_field = next((f for f in spec.expert_count_fields if f in names), None)
        if count_field and spec.n_experts(config):
            config[count_field] = spec.n_experts(config)
        # None is kept: it can mean something (DeepSeek-V2-Lite's q_lora_rank: null)
        kept = {k: v for k, v in config.items() if k in names}
        args = cls(**kept, rope=RopeParams.from_config(config, cls.default_theta))
        if args.num_key_value_heads is None:
            args.num_key_value_heads = args.num_attention_heads
        if args.head_dim is None:
            args.head_dim = args.hidden_size // args.num_attention_heads
        args.__post_init_args__(config)
        return args

    def __post_init_args__(self, config: dict) -> None:
        """Hook for architectures that derive fields (e.g. Qwen's sliding window switch)."""

    def is_moe_layer(self, layer: int) -> bool:
        return False

    @property
    def n_experts(self) -> int:
        return 0

    @property
    def experts_per_token(self) -> int:
        return 0

    @property
    def eos_token_ids(self) -> list[int]:
        eos = self.eos_token_id
        if eos is None:
            return []
        return list(eos) if isinstance(eos, list) else [int(eos)]
