"""Quantization recipes, for both output formats: the one table the CLI, the Convert tab,
the converter and the memory planner read (name, format, nominal bits, description, the
per-tensor rule, the default of each format).

Torch-format recipes (bf16, int8, int4) say which scheme the routed experts and the other
linear layers get (converters/formats/torch_format.py writes them; the maths is in
converters/formats/torch_quant.py). GGUF recipes say which GGUF type each tensor gets:

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

import re
from dataclasses import dataclass, replace

from gguf import MODEL_TENSOR as T
from gguf import GGMLQuantizationType, LlamaFileType

from converters.core.errors import ItamaeError
from converters.formats.gguf_plan import INTEGER_TYPES, PlannedTensor
from converters.formats.gguf_quant import can_quantize

Q = GGMLQuantizationType
ALWAYS_F32 = (T.FFN_GATE_INP, T.FFN_GATE_INP_SHEXP, T.ROPE_FREQS, T.SSM_CONV1D)


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    direct: Q | None = None  # GGUF written directly by Itamae
    file_type: LlamaFileType = LlamaFileType.ALL_F32
    llama_ftype: LlamaFileType | None = None  # else: quantized by llama.cpp with this ftype
    overrides: tuple[tuple[str, Q], ...] = ()  # GGUF-name regex -> type, for llama.cpp
    embeddings: Q | None = None  # token_embd / output types for llama.cpp (None: its choice)
    # Whole-model bits per weight, for size estimates before anything is read. llama.cpp's
    # mixes: from the sizes its quantize tool lists for Llama-3-8B (tools/quantize/quantize.cpp,
    # GiB * 8 / 8.03e9 params); the MoE recipes spend ~4 (or ~3) bits on routed experts,
    # which are nearly all of an MoE's weights, and 8 on the rest.
    nominal_bits: float = 16.0
    format: str = "gguf"  # "gguf" | "torch"
    experts: str = ""  # torch format: the routed experts' scheme (bf16 | int8 | int4)
    rest: str = ""  # torch format: the other linear layers' scheme (bf16 | int8)

    @property
    def uses_llama_quantizer(self) -> bool:
        return self.llama_ftype is not None


def _direct(qtype: Q, file_type: LlamaFileType, bits: float) -> Recipe:
    return Recipe(
        qtype.name,
        f"every weight {qtype.name} ({bits:g} bits)",
        qtype,
        file_type,
        nominal_bits=bits,
    )


def _kquant(name: str, ftype: LlamaFileType, bits: float) -> Recipe:
    return Recipe(
        name, f"llama.cpp's {name} mixture (~{bits:g} bits)", None, ftype, ftype, nominal_bits=bits
    )


def _torch(name: str, experts: str, rest: str, bits: float, description: str) -> Recipe:
    return Recipe(name, description, nominal_bits=bits, format="torch", experts=experts, rest=rest)


EXPERTS_GATE_UP = r"\.ffn_(gate|up)_exps\."
EXPERTS_DOWN = r"\.ffn_down_exps\."
GGUF_RECIPES = (
    _direct(Q.F32, LlamaFileType.ALL_F32, 32),
    _direct(Q.F16, LlamaFileType.MOSTLY_F16, 16),
    _direct(Q.BF16, LlamaFileType.MOSTLY_BF16, 16),
    _direct(Q.Q8_0, LlamaFileType.MOSTLY_Q8_0, 8.51),  # 8.5, and F32 norms
    _kquant("Q6_K", LlamaFileType.MOSTLY_Q6_K, 6.57),
    _direct(Q.Q5_1, LlamaFileType.MOSTLY_Q5_1, 6),
    _kquant("Q5_K_M", LlamaFileType.MOSTLY_Q5_K_M, 5.70),
    _direct(Q.Q5_0, LlamaFileType.MOSTLY_Q5_0, 5.5),
    _direct(Q.Q4_1, LlamaFileType.MOSTLY_Q4_1, 5),
    _kquant("Q4_K_M", LlamaFileType.MOSTLY_Q4_K_M, 4.90),
    Recipe(
        "moe-q4",
        "routed experts Q4_K (4.5 bits); attention, shared experts, embeddings, output Q8_0; "
        "routers and norms F32",
        file_type=LlamaFileType.MOSTLY_Q8_0,
        llama_ftype=LlamaFileType.MOSTLY_Q8_0,
        overrides=((EXPERTS_GATE_UP, Q.Q4_K), (EXPERTS_DOWN, Q.Q4_K)),
        embeddings=Q.Q8_0,
        nominal_bits=4.7,
    ),
    _direct(Q.Q4_0, LlamaFileType.MOSTLY_Q4_0, 4.5),
    _kquant("Q3_K_M", LlamaFileType.MOSTLY_Q3_K_M, 4.00),
    Recipe(
        "moe-q3",
        "routed experts Q3_K (gate/up, 3.4 bits) and Q4_K (down, which is more sensitive); "
        "attention, shared experts, embeddings, output Q8_0; routers and norms F32",
        file_type=LlamaFileType.MOSTLY_Q8_0,
        llama_ftype=LlamaFileType.MOSTLY_Q8_0,
        overrides=((EXPERTS_GATE_UP, Q.Q3_K), (EXPERTS_DOWN, Q.Q4_K)),
        embeddings=Q.Q8_0,
        nominal_bits=3.8,
    ),
    _kquant("Q2_K", LlamaFileType.MOSTLY_Q2_K, 3.17),
)
TORCH_RECIPES = (
    _torch("bf16", "bf16", "bf16", 16, "every weight bf16"),
    _torch("int8", "int8", "int8", 8.1, "experts and other linear layers int8, one scale per row"),
    _torch("int4", "int4", "int8", 4.6,
           "routed experts, attention and the output layer int4 in groups (scale and zero "
           "per group), as Q4_0 stores them; shared experts and dense layers int8"),
)  # fmt: skip
RECIPES: dict[str, dict[str, Recipe]] = {
    "gguf": {r.name.lower(): r for r in GGUF_RECIPES},
    "torch": {r.name.lower(): r for r in TORCH_RECIPES},
}
DEFAULTS = {"gguf": "Q8_0", "torch": "int8"}  # what `itamae convert` and the Convert tab pick


def recipes_for(fmt: str) -> list[Recipe]:
    """The recipes of one output format, most bits first."""
    return list(_format_table(fmt).values())


def default_recipe(fmt: str) -> Recipe:
    return get_recipe(DEFAULTS[fmt], fmt)


def get_recipe(name: str, fmt: str = "gguf") -> Recipe:
    recipe = _format_table(fmt).get(name.lower())
    if recipe is None:
        other = next(
            (f for f, table in RECIPES.items() if f != fmt and name.lower() in table), None
        )
        extra = f" {name} is a {other} recipe (--format {other})." if other else ""
        raise ItamaeError(
            f"Unknown quantization recipe {name!r} for the {fmt} format.{extra}",
            "Choose one of: " + ", ".join(r.name for r in recipes_for(fmt)) + ".",
        )
    return recipe


def _format_table(fmt: str) -> dict[str, Recipe]:
    if fmt not in RECIPES:
        raise ItamaeError(f"Unknown output format {fmt!r}.", "Choose gguf or torch.")
    return RECIPES[fmt]


def stays_f32(p: PlannedTensor) -> bool:
    """llama.cpp's converter keeps these in F32 whatever the requested type."""
    return (
        len(p.shape) <= 1
        or p.name.endswith("_norm.weight")
        or not p.name.endswith(".weight")
        or p.kind in ALWAYS_F32
    )


def tensor_type(p: PlannedTensor, target: Q, pin: bool = True) -> Q:
    """`pin`: give tensors the type llama.cpp's converter pins for them (PlannedTensor.pinned;
    not for the F32 reference, nor for the file llama.cpp's quantizer starts from)."""
    if p.pinned in INTEGER_TYPES:
        return p.pinned
    if p.pinned is not None and pin and target != Q.F32:
        # llama.cpp's prepare_tensors: its forced type, but 1-D tensors and norms in F32
        return Q.F32 if len(p.shape) <= 1 or p.name.endswith("_norm.weight") else p.pinned
    if p.carried is not None:
        # blocks published quantized (gpt-oss's MXFP4 experts) keep their bits; only the
        # full-precision reference recipe dequantizes them (exactly)
        return Q.F32 if target == Q.F32 else p.carried
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


def keeping_carried(recipe: Recipe, planned: list[PlannedTensor]) -> Recipe:
    """The recipe, with llama.cpp's quantizer told to copy tensors that were carried in their
    published block type (MXFP4 experts) instead of requantizing them (which it refuses)."""
    carried = {p.qtype for p in planned if p.carried is not None and p.qtype == p.carried}
    if not recipe.uses_llama_quantizer or not carried:
        return recipe
    keep = tuple((rf"^{re.escape(p.name)}$", p.qtype) for p in planned if p.qtype in carried)
    return replace(recipe, overrides=keep + recipe.overrides)
