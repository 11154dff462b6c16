"""`ArchSpec`: what is true of one architecture family, whatever engine runs it.

A family module (`converters/archs/<model_type>.py`) builds one `SPEC`. It says how the
family's config.json is read (which fields name the expert count, the experts per token,
which layers are MoE), how its tensors are spelled and what llama.cpp calls them (the GGUF
arch, tensor kinds and metadata keys, from gguf-py's constants), how a GGUF header of the
family is recognised, how the torch format lays out its experts, and which chat-template
convention its publisher uses. Everything that asks about an architecture asks here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES
from gguf import MODEL_TENSOR as T

# Config fields that name the routed experts per MoE layer, in the order they are tried:
# Qwen-MoE publishes num_experts (transformers 5 saves num_local_experts), Mixtral
# num_local_experts, DeepSeek n_routed_experts.
EXPERT_COUNT_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts")
EXPERTS_PER_TOKEN_FIELDS = ("num_experts_per_tok",)
# GGUF expert tensor kind -> the part of an expert the torch format stores it as
EXPERT_PARTS = {T.FFN_GATE_EXP: "gate", T.FFN_UP_EXP: "up", T.FFN_DOWN_EXP: "down"}


# Chat formats whose replies are structured by special tokens the reader must see: Harmony
# (gpt-oss) opens each message with <|channel|>NAME<|message|> and closes it with <|end|>,
# the analysis channel being the reasoning. Engines keep those tokens in the reply text.
MARKED_REPLY_FORMATS = frozenset({"harmony"})


# A GGUF tensor kind: the gguf package's MODEL_TENSOR, or llama.cpp's name template
# ("blk.{bid}.hc_attn_fn") where gguf 0.19.0 has no kind for it yet (DeepSeek-V4)
TensorKind = T | str


def _always(metadata: dict) -> bool:
    return True


FULL_ATTENTION, LINEAR_ATTENTION = "full_attention", "linear_attention"


def _all_full_attention(config: dict) -> list[str]:
    return [FULL_ATTENTION] * int(config.get("num_hidden_layers") or 0)


def _standard_layer(config: dict, bid: int) -> tuple[T, ...]:
    return (T.ATTN_NORM, T.FFN_NORM, T.ATTN_OUT)


@dataclass(frozen=True)
class ArchSpec:
    model_type: str  # HF config.json `model_type`, the module's name
    gguf_arch: MODEL_ARCH
    # name after `model.layers.{bid}.` -> (kind, suffix)
    layer_tensors: dict[str, tuple[TensorKind, str]]
    expert_prefix: str  # e.g. "mlp.experts" (per-expert names follow it: `.{xid}.<proj>.weight`)
    expert_projections: dict[str, T]  # per-expert projection name -> GGUF expert kind
    metadata: Callable[[dict], list[tuple[str, object]]]  # config -> GGUF `{arch}.*` keys
    transforms: dict[str, str] = field(default_factory=dict)  # layer name -> transform
    aliases: tuple[str, ...] = ()  # other model_type spellings of the same computation
    # Is a GGUF header whose general.architecture is `gguf_arch` this family? Needed where
    # llama.cpp runs several families as one arch (Mixtral as "llama", V2 and V3 as "deepseek2").
    recognise_gguf: Callable[[dict], bool] = _always
    chat_format: str = ""  # the publisher's chat-template convention: "chatml", "llama3", ...
    # The publisher's chat encoding as a template, for a family that ships code instead of
    # one (DeepSeek-V3.2's encoding_dsv32.py); used when the checkpoint has no template
    chat_template: str = ""
    expert_count_fields: tuple[str, ...] = EXPERT_COUNT_FIELDS
    experts_per_token_fields: tuple[str, ...] = EXPERTS_PER_TOKEN_FIELDS
    # Fused experts' gate_up rows: gate rows then up rows (transformers 5), or interleaved
    # (gpt-oss: even rows gate, odd rows up, and transformers holds them [E, in, out]).
    gate_up_interleaved: bool = False
    # llama.cpp's arch string where the gguf package has no MODEL_ARCH for it yet (gguf
    # 0.19.0 lacks "deepseek32"); `gguf_arch` then names the arch its tensor kinds follow
    gguf_arch_name: str = ""
    # Per layer: "full_attention" (softmax over a KV cache) or "linear_attention" (a
    # recurrent state), as transformers' `layer_types` names them.
    layer_types: Callable[[dict], list[str]] = _all_full_attention
    # (config, bid) -> is layer bid a MoE layer, for a family that names its MoE layers by
    # kind (Nemotron-H's hybrid_override_pattern "E") instead of the common fields
    moe_layer: Callable[[dict, int], bool] | None = None
    # False where a layer is one mixer (Nemotron-H: Mamba-2, attention or MoE), so that
    # required_layer_kinds names everything layer `bid` must have, FFN included
    ffn_in_every_layer: bool = True
    # The GGUF kinds besides the FFN's that every layer `bid` of a checkpoint must have.
    required_layer_kinds: Callable[[dict, int], tuple[T, ...]] = _standard_layer
    # Are the next-token-prediction layers (model.layers.{>= num_hidden_layers}) carried into
    # the GGUF as llama.cpp's nextn blocks (GLM-4.5), or left out (DeepSeek-V3)?
    gguf_keeps_nextn: bool = False
    # GGUF special-token kind -> token text, as llama.cpp's converter sets them for the family
    special_tokens: dict[str, str] = field(default_factory=dict)
    # config -> facts inspect reports in ModelInfo.extra (DeepSeek-V4's attention kinds)
    extra_facts: Callable[[dict], dict] = lambda config: {}
    # GGUF metadata -> the same facts, read from the keys the family's GGUF carries them in
    gguf_extra_facts: Callable[[dict], dict] = lambda metadata: {}
    # False for a family Itamae describes but does not yet write as GGUF (DeepSeek-V4)
    converts_to_gguf: bool = True
    # False where the torch format cannot lay out the family's experts yet (Nemotron-H's
    # two-matrix ReLU^2 experts: its slots are gate, up and down)
    converts_to_torch_format: bool = True
    # A dense MLP runs beside the routed experts in every MoE layer, for every token
    # (Gemma 4): counted as the one shared expert.
    dense_mlp_beside_experts: bool = False
    # llama.cpp keeps transformers 5's fused experts.gate_up_proj as one ffn_gate_up_exps
    # tensor for this family (Gemma 4) instead of splitting it into gate and up
    gguf_fused_gate_up: bool = False
    # tokenizer.ggml.model where llama.cpp's converter names its own for the family
    # ("gemma4"); "" for the default by tokenizer kind ("gpt2" / "llama")
    tokenizer_model: str = ""
    # tokens that converter keeps USER_DEFINED so that llama.cpp's chat parser sees them
    visible_tokens: frozenset[str] = frozenset()
    # Fused experts stored inputs first, [E, in, out] (Llama 4's gate_up_proj [E, H, 2F] and
    # down_proj [E, F, H]); HFCheckpoint hands them out as transformers 5's [E, out, in]
    fused_experts_in_out: bool = False
    # Shared experts every MoE layer has whatever config.json says (Llama 4 names no count)
    shared_experts_per_moe_layer: int = 0
    # The attention window llama.cpp's loader gives the family when its GGUF names none
    # (Llama 4: chunks of 8192 on its RoPE layers), which runs it with llama.cpp's
    # two-mask iSWA cache; the memory plan counts the second mask by it
    llamacpp_default_window: int = 0
    # root tensors besides transformers' (embed_tokens, norm, lm_head): publisher spelling
    # -> (kind, suffix), for a family published under its own code's names (DeepSeek-V4)
    root_tensors: dict[str, tuple[TensorKind, str]] = field(default_factory=dict)
    # (config, bid, name after the layer prefix) -> True for a tensor llama.cpp's converter
    # leaves out of the GGUF (DeepSeek-V4's unused router bias in hash-routed layers)
    gguf_drops: Callable[[dict, int | None, str], bool] = lambda config, bid, rest: False
    # llama.cpp's converter types each tensor by its published dtype whatever --outtype
    # asks (DeepSeek-V4: FP8 -> Q8_0, BF16 -> BF16, F32 -> F32); Itamae's direct recipes do
    # the same, except F32, the exact reference
    gguf_types_by_source: bool = False

    @property
    def arch_name(self) -> str:
        """The GGUF `general.architecture` string."""
        return self.gguf_arch_name or MODEL_ARCH_NAMES[self.gguf_arch]

    @property
    def names(self) -> tuple[str, ...]:
        return (self.model_type, *self.aliases)

    def n_experts(self, config: dict) -> int:
        """Routed experts per MoE layer (0 for a dense model)."""
        return _first_int(config, self.expert_count_fields)

    def experts_per_token(self, config: dict) -> int:
        return _first_int(config, self.experts_per_token_fields) if self.n_experts(config) else 0

    def n_shared_experts(self, config: dict) -> int:
        if self.dense_mlp_beside_experts and self.n_experts(config):
            return 1
        if self.shared_experts_per_moe_layer and self.n_experts(config):
            return self.shared_experts_per_moe_layer
        if config.get("n_shared_experts"):
            return int(config["n_shared_experts"])
        return 1 if config.get("shared_expert_intermediate_size") else 0

    def is_moe_layer(self, config: dict, bid: int) -> bool:
        if not self.n_experts(config):
            return False
        if self.moe_layer is not None:
            return self.moe_layer(config, bid)
        if bid < int(config.get("first_k_dense_replace") or 0):
            return False
        if bid in (config.get("mlp_only_layers") or []):
            return False
        if isinstance(config.get("moe_layers"), list):  # Llama 4 lists them
            return bid in config["moe_layers"]
        if step := int(config.get("interleave_moe_layer_step") or 0):  # Llama 4: every step-th
            return (bid + 1) % step == 0
        step = int(config.get("decoder_sparse_step") or config.get("moe_layer_freq") or 1)
        return (bid + 1) % step == 0 if "decoder_sparse_step" in config else bid % step == 0

    def nextn_layers(self, config: dict) -> int:
        """How many next-token-prediction layers the GGUF carries after the decoder layers."""
        return int(config.get("num_nextn_predict_layers") or 0) if self.gguf_keeps_nextn else 0

    @property
    def reply_has_markers(self) -> bool:
        return self.chat_format in MARKED_REPLY_FORMATS

    def expert_parts(self) -> dict[str, str]:
        """Per-expert projection name -> "gate" | "up" | "down" (the torch format's parts)."""
        return {proj: EXPERT_PARTS[kind] for proj, kind in self.expert_projections.items()}


def _first_int(config: dict, fields: tuple[str, ...]) -> int:
    return int(next((config[k] for k in fields if config.get(k)), 0))
