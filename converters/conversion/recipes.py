"""Quantization recipes: which GGUF type each tensor gets.

Direct recipes (F32 ... Q5_1) are written by Itamae in one pass, with the per-tensor rules
of llama.cpp's converter (`ModelBase.prepare_tensors`): 1-D tensors, norms, biases and the
MoE routers stay F32; a tensor whose rows do not split into blocks falls back to F16.

K-quant and MoE recipes are produced by llama.cpp's own quantizer (`llama_model_quantize`)
from a full-precision GGUF that Itamae writes first. The MoE recipes give llama.cpp
per-tensor overrides (regexes on GGUF names, its `tt_overrides`): routed experts, which
hold nearly all parameters but of which only a few run per token, get few bits; the
tensors every token goes through (attention, shared experts, embeddings, output) keep
8 bits; routers and norms stay F32 (llama.cpp never quantizes them).
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import MODEL_TENSOR as T
from gguf import GGMLQuantizationType, LlamaFileType

from converters.core.errors import ItamaeError
from converters.formats.gguf_plan import PlannedTensor
from converters.formats.gguf_quant import can_quantize

Q = GGMLQuantizationType
ALWAYS_F32 = (T.FFN_GATE_INP, T.FFN_GATE_INP_SHEXP, T.ROPE_FREQS)


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    direct: Q | None = None  # written directly by Itamae
    file_type: LlamaFileType = LlamaFileType.ALL_F32
    llama_ftype: LlamaFileType | None = None  # else: quantized by llama.cpp with this ftype
    overrides: tuple[tuple[str, Q], ...] = ()  # GGUF-name regex -> type, for llama.cpp
    embeddings: Q | None = None  # token_embd / output types for llama.cpp (None: its choice)

    @property
    def uses_llama_quantizer(self) -> bool:
        return self.llama_ftype is not None


def _direct(qtype: Q, file_type: LlamaFileType, bits: str) -> Recipe:
    return Recipe(qtype.name, f"every weight {qtype.name} ({bits})", qtype, file_type)


def _kquant(name: str, ftype: LlamaFileType, bits: str) -> Recipe:
    return Recipe(name, f"llama.cpp's {name} mixture ({bits})", None, ftype, ftype)


EXPERTS_GATE_UP = r"\.ffn_(gate|up)_exps\."
EXPERTS_DOWN = r"\.ffn_down_exps\."
RECIPES: dict[str, Recipe] = {
    r.name.lower(): r
    for r in (
        _direct(Q.F32, LlamaFileType.ALL_F32, "32 bits"),
        _direct(Q.F16, LlamaFileType.MOSTLY_F16, "16 bits"),
        _direct(Q.BF16, LlamaFileType.MOSTLY_BF16, "16 bits"),
        _direct(Q.Q8_0, LlamaFileType.MOSTLY_Q8_0, "8.5 bits"),
        _direct(Q.Q5_1, LlamaFileType.MOSTLY_Q5_1, "6 bits"),
        _direct(Q.Q5_0, LlamaFileType.MOSTLY_Q5_0, "5.5 bits"),
        _direct(Q.Q4_1, LlamaFileType.MOSTLY_Q4_1, "5 bits"),
        _direct(Q.Q4_0, LlamaFileType.MOSTLY_Q4_0, "4.5 bits"),
        _kquant("Q6_K", LlamaFileType.MOSTLY_Q6_K, "~6.6 bits"),
        _kquant("Q5_K_M", LlamaFileType.MOSTLY_Q5_K_M, "~5.7 bits"),
        _kquant("Q4_K_M", LlamaFileType.MOSTLY_Q4_K_M, "~4.9 bits"),
        _kquant("Q3_K_M", LlamaFileType.MOSTLY_Q3_K_M, "~3.9 bits"),
        _kquant("Q2_K", LlamaFileType.MOSTLY_Q2_K, "~3 bits"),
        Recipe(
            "moe-q4",
            "routed experts Q4_K (4.5 bits); attention, shared experts, embeddings, output Q8_0; "
            "routers and norms F32",
            file_type=LlamaFileType.MOSTLY_Q8_0,
            llama_ftype=LlamaFileType.MOSTLY_Q8_0,
            overrides=((EXPERTS_GATE_UP, Q.Q4_K), (EXPERTS_DOWN, Q.Q4_K)),
            embeddings=Q.Q8_0,
        ),
        Recipe(
            "moe-q3",
            "routed experts Q3_K (gate/up, 3.4 bits) and Q4_K (down, which is more sensitive); "
            "attention, shared experts, embeddings, output Q8_0; routers and norms F32",
            file_type=LlamaFileType.MOSTLY_Q8_0,
            llama_ftype=LlamaFileType.MOSTLY_Q8_0,
            overrides=((EXPERTS_GATE_UP, Q.Q3_K), (EXPERTS_DOWN, Q.Q4_K)),
            embeddings=Q.Q8_0,
        ),
    )
}


def get_recipe(name: str) -> Recipe:
    recipe = RECIPES.get(name.lower())
    if recipe is None:
        raise ItamaeError(
            f"Unknown quantization recipe {name!r}.",
            "Choose one of: " + ", ".join(r.name for r in RECIPES.values()) + ".",
        )
    return recipe


def stays_f32(p: PlannedTensor) -> bool:
    """llama.cpp's converter keeps these in F32 whatever the requested type."""
    return (
        len(p.shape) <= 1
        or p.name.endswith("_norm.weight")
        or not p.name.endswith(".weight")
        or p.kind in ALWAYS_F32
    )


def tensor_type(p: PlannedTensor, target: Q) -> Q:
    if stays_f32(p):
        return Q.F32
    if target not in (Q.F32, Q.F16, Q.BF16) and not can_quantize(p.shape, target):
        return Q.F16  # as llama.cpp's converter does when rows don't split into blocks
    return target


def source_precision(dtypes: set[str]) -> Q:
    """The float type that holds a checkpoint's weights without loss, for the intermediate
    file llama.cpp quantizes from (FP8 dequantizes to values BF16 keeps nearly exactly)."""
    if dtypes and dtypes <= {"F16"}:
        return Q.F16
    if dtypes and dtypes <= {"BF16", "F8_E4M3", "F8_E5M2"}:
        return Q.BF16
    return Q.F32
