"""Plan a GGUF file from a checkpoint's headers alone: every output tensor's name, shape and
the source tensors it is made of, checked before a single byte is written.

Reading the plan's data is converters/formats/gguf_pieces.py. Layouts follow llama.cpp's converter (conversion/llama.py `permute`,
conversion/deepseek.py `kv_b_proj` split). Multi-token-prediction layers
(`model.layers.{n >= num_hidden_layers}`) are skipped (DeepSeek-V3) or carried as nextn
blocks (GLM-4.5), as llama.cpp's converter does for each family (`ArchSpec.gguf_keeps_nextn`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from gguf import MODEL_TENSOR as T
from gguf import TENSOR_NAMES, GGMLQuantizationType

from converters.archs.rope import rope_parameters
from converters.archs.spec import ArchSpec, TensorKind
from converters.archs.tensors import (
    COLUMN,
    GLOBAL_TENSORS,
    GROUP_ROWS,
    SPLIT_KV_B,
    SPLIT_QKVZ,
    SQUEEZE,
    split_layer_name,
)
from converters.core.errors import BadModelFile
from converters.formats.gguf_linear_attention import (
    QKVZ_QKV,
    QKVZ_Z,
    qkvz_shapes,
)
from converters.formats.hf_reader import HFCheckpoint
from converters.formats.mxfp4 import BLOCKS_SUFFIX, SCALES_SUFFIX

IGNORED = re.compile(r"(rotary_emb\.inv_freq|attention\.masked_bias|attn\.bias)$")
K_B, V_B, ROPE_FREQS = "k_b", "v_b", "rope_freqs"
# Gemma 4's global layers: "proportional" RoPE rotates the first partial_rotary_factor of
# each half-head; llama.cpp rotates all dims and gets 1e30 frequency factors for the rest
PROPORTIONAL_FREQS = "proportional_rope_freqs"
FUSED_GATE, FUSED_UP = "fused_gate", "fused_up"  # halves of transformers 5's gate_up_proj
# Interleaved gate_up (gpt-oss): which rows of the fused projection a part takes
EVEN_ROWS, ODD_ROWS = "even_rows", "odd_rows"
MXFP4_ROWS = "mxfp4"  # MXFP4 blocks + scales, per expert (rows: ROW_PARTS[transform])
FP4_EXPERTS = "fp4_experts"  # one expert per source: DeepSeek-V4's int8 codes + e8m0 .scale
MXFP4_GATE, MXFP4_UP = "mxfp4_gate", "mxfp4_up"
IN_OUT_GATE, IN_OUT_UP, IN_OUT = "in_out_gate", "in_out_up", "in_out"  # [E, in, out] floats
ROW_PARTS = {
    EVEN_ROWS: slice(0, None, 2), ODD_ROWS: slice(1, None, 2), MXFP4_GATE: slice(0, None, 2),
    MXFP4_UP: slice(1, None, 2), MXFP4_ROWS: slice(None), IN_OUT_GATE: slice(0, None, 2),
    IN_OUT_UP: slice(1, None, 2), IN_OUT: slice(None),
}  # fmt: skip
PACKED_SUFFIXES = (BLOCKS_SUFFIX, SCALES_SUFFIX, "_bias")
# The type llama.cpp's converter gives a tensor by its published dtype, for a family whose
# converter pins them (ArchSpec.gguf_types_by_source; DeepSeek-V4's `tensor_force_quant`)
TYPE_BY_SOURCE = {
    "F8_E4M3": GGMLQuantizationType.Q8_0,  # FP8 dequantized, then Q8_0 ("faster than BF16")
    "F8_E5M2": GGMLQuantizationType.Q8_0,
    "BF16": GGMLQuantizationType.BF16,
    "F32": GGMLQuantizationType.F32,
    "I64": GGMLQuantizationType.I32,  # hash-routing tables, token id -> expert ids
    "I32": GGMLQuantizationType.I32,
}
INTEGER_TYPES = (GGMLQuantizationType.I32,)


@dataclass
class PlannedTensor:
    name: str  # GGUF name, e.g. "blk.3.ffn_up_exps.weight"
    kind: TensorKind
    bid: int | None
    shape: tuple[int, ...]  # numpy order (outermost first); ggml's ne is the reverse
    sources: tuple[str, ...]  # HF names; one per expert for stacked experts
    transform: str = ""
    qtype: GGMLQuantizationType = GGMLQuantizationType.F32
    # The source already holds this GGUF type's blocks (MXFP4 experts): carried as they
    # are unless the recipe asks for full float (then dequantized, exactly).
    carried: GGMLQuantizationType | None = None
    # The type llama.cpp's converter always gives it (TYPE_BY_SOURCE), where it pins one
    pinned: GGMLQuantizationType | None = None

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def is_expert(self) -> bool:
        return self.kind in (T.FFN_GATE_EXP, T.FFN_UP_EXP, T.FFN_DOWN_EXP, T.FFN_GATE_UP_EXP)


def gguf_name(kind: TensorKind, bid: int | None, suffix: str) -> str:
    template = kind if isinstance(kind, str) else TENSOR_NAMES[kind]
    return template.format(bid=bid) + suffix


def plan_tensors(ckpt: HFCheckpoint, spec: ArchSpec) -> list[PlannedTensor]:
    config = ckpt.config
    n_layers = int(config["num_hidden_layers"]) + spec.nextn_layers(config)
    planned: list[PlannedTensor] = []
    experts: dict[tuple[int, str], dict[int, str]] = {}
    unknown: list[str] = []
    expert_name = re.compile(rf"^{re.escape(spec.expert_prefix)}\.(\d+)\.(\w+)\.weight$")
    fused_name = re.compile(
        rf"^{re.escape(spec.expert_prefix)}\.(gate_up_proj|down_proj)(?:\.weight)?$"
    )
    packed_name = re.compile(
        rf"^{re.escape(spec.expert_prefix)}\.(gate_up_proj|down_proj)(_blocks|_scales|_bias)$"
    )
    for name in ckpt.tensor_names():
        bid, rest = split_layer_name(name)
        if IGNORED.search(name) or (bid is not None and bid >= n_layers):
            continue  # buffers, and MTP layers the family's GGUF does not carry
        if name.endswith(".scale") and name.removesuffix(".scale") + ".weight" in ckpt:
            continue  # DeepSeek-V4's FP8 / FP4 scales, read with their weight
        if spec.gguf_drops(config, bid, rest):
            continue
        m = expert_name.match(rest) if bid is not None and spec.expert_prefix else None
        if m and m.group(2) in spec.expert_projections:
            experts.setdefault((bid, m.group(2)), {})[int(m.group(1))] = name
            continue
        packed = packed_name.match(rest) if bid is not None and spec.expert_prefix else None
        if packed:
            planned += _plan_packed_experts(ckpt, spec, name, bid, *packed.groups())
            continue
        fused = fused_name.match(rest) if bid is not None and spec.expert_prefix else None
        if fused:
            planned += _plan_fused_experts(ckpt, spec, name, bid, fused.group(1))
            continue
        table = spec.layer_tensors if bid is not None else {**GLOBAL_TENSORS, **spec.root_tensors}
        if rest not in table:
            unknown.append(name)
            continue
        planned += _plan_one(ckpt, spec, name, bid, rest, *table[rest])
    if unknown:
        raise BadModelFile(
            f"{len(unknown)} tensors do not belong to a {spec.model_type} checkpoint, e.g. "
            f"{', '.join(unknown[:3])}.",
            "The config.json does not match the weights; re-download the model.",
        )
    planned += _plan_experts(ckpt, spec, experts)
    planned += _plan_rope_freqs(config)
    _check_complete(ckpt, spec, planned)
    if spec.gguf_types_by_source:
        _pin_types(ckpt, planned)
    # token_embd first, then layer by layer, then the head; sorted so the file does not
    # depend on how the checkpoint is sharded
    order = {T.TOKEN_EMBD: 0, T.OUTPUT_NORM: 2, T.OUTPUT: 3}
    return sorted(planned, key=lambda p: (order.get(p.kind, 1), p.bid or 0, p.name))


def _plan_one(ckpt, spec, name, bid, rest, kind, suffix) -> list[PlannedTensor]:
    shape = tuple(ckpt.shape(name))
    transform = spec.transforms.get(rest, "")
    steps = transform.split("+")
    if SQUEEZE in steps:
        shape = tuple(n for n in shape if n != 1)
    if COLUMN in steps:
        shape = (math.prod(shape), 1)
    if GROUP_ROWS in steps:
        groups = int(ckpt.config.get("n_groups") or 1)
        shape = (groups, math.prod(shape) // groups)
    if transform == SPLIT_QKVZ:
        return _plan_qkvz(ckpt.config, name, bid, shape)
    if transform != SPLIT_KV_B:
        return [PlannedTensor(gguf_name(kind, bid, suffix), kind, bid, shape, (name,), transform)]
    config = ckpt.config
    heads, nope, v_dim = (
        int(config["num_attention_heads"]),
        int(config["qk_nope_head_dim"]),
        int(config["v_head_dim"]),
    )
    if len(shape) != 2 or shape[0] != heads * (nope + v_dim):
        raise BadModelFile(
            f"{name} has shape {list(shape)}, expected [{heads * (nope + v_dim)}, kv_lora_rank].",
            "The checkpoint does not match its config.json.",
        )
    lora = shape[1]
    return [
        PlannedTensor(
            gguf_name(T.ATTN_K_B, bid, suffix), T.ATTN_K_B, bid, (heads, lora, nope), (name,), K_B
        ),
        PlannedTensor(
            gguf_name(T.ATTN_V_B, bid, suffix), T.ATTN_V_B, bid, (heads, v_dim, lora), (name,), V_B
        ),
    ]


def _plan_qkvz(config, name, bid, shape) -> list[PlannedTensor]:
    """in_proj_qkvz stores [q, k, v, z] rows per key head; llama.cpp wants all q, then all
    k, then all v (attn_qkv) and the z rows apart (attn_gate), as Qwen3NextModel writes."""
    qkv, z = qkvz_shapes(config, name, shape)
    return [
        PlannedTensor(
            gguf_name(T.ATTN_QKV, bid, ".weight"), T.ATTN_QKV, bid, qkv, (name,), QKVZ_QKV
        ),
        PlannedTensor(gguf_name(T.ATTN_GATE, bid, ".weight"), T.ATTN_GATE, bid, z, (name,), QKVZ_Z),
    ]


def _plan_experts(ckpt, spec, experts) -> list[PlannedTensor]:
    n_experts = spec.n_experts(ckpt.config)
    planned = []
    for (bid, proj), by_index in sorted(experts.items()):
        missing = sorted(set(range(n_experts)) - set(by_index))
        if missing or len(by_index) != n_experts:
            raise BadModelFile(
                f"Layer {bid} has {len(by_index)} of {n_experts} experts for {proj} "
                f"(missing e.g. expert {missing[:3]}).",
                "The checkpoint is incomplete; re-download it.",
            )
        names = tuple(by_index[i] for i in range(n_experts))
        shapes = {tuple(ckpt.shape(n)) for n in names}
        if len(shapes) != 1:
            raise BadModelFile(
                f"The {proj} experts of layer {bid} have different shapes: {sorted(shapes)}.",
                "The checkpoint is damaged; re-download it.",
            )
        kind, shape = spec.expert_projections[proj], shapes.pop()
        if _is_fp4(ckpt, names[0]):  # two codes a byte, carried as MXFP4
            rows, half = shape
            planned.append(
                PlannedTensor(
                    gguf_name(kind, bid, ".weight"), kind, bid, (n_experts, rows, 2 * half),
                    names, FP4_EXPERTS, carried=GGMLQuantizationType.MXFP4,
                )
            )  # fmt: skip
            continue
        planned.append(
            PlannedTensor(gguf_name(kind, bid, ".weight"), kind, bid, (n_experts, *shape), names)
        )
    return planned


def _is_fp4(ckpt: HFCheckpoint, name: str) -> bool:
    """DeepSeek-V4's FP4 expert: int8 codes with an e8m0 `.scale` (one per 32 values)."""
    scale = name.removesuffix(".weight") + ".scale"
    return ckpt.dtype_name(name) == "I8" and scale in ckpt


def _pin_types(ckpt: HFCheckpoint, planned: list[PlannedTensor]) -> None:
    for p in planned:
        if p.carried is None and p.sources:
            p.pinned = TYPE_BY_SOURCE.get(ckpt.dtype_name(p.sources[0]))


def _plan_fused_experts(ckpt, spec, name, bid, proj) -> list[PlannedTensor]:
    """transformers 5's fused layout: gate_up_proj [E, 2F, H] (gate rows first) and
    down_proj [E, H, F], already stacked (llama.cpp's conversion/qwen.py reads the same)."""
    shape = tuple(ckpt.shape(name))
    if len(shape) != 3 or (proj == "gate_up_proj" and shape[1] % 2):
        raise BadModelFile(
            f"{name} has shape {list(shape)}, not the [experts, rows, columns] of fused experts.",
            "The checkpoint is damaged or from an unknown layout.",
        )
    if spec.gate_up_interleaved:
        return _plan_in_out_experts(name, bid, proj, shape)
    if proj == "down_proj" or spec.gguf_fused_gate_up:
        kind = T.FFN_DOWN_EXP if proj == "down_proj" else T.FFN_GATE_UP_EXP
        return [PlannedTensor(gguf_name(kind, bid, ".weight"), kind, bid, shape, (name,))]
    if proj == "down_proj":
        return [
            PlannedTensor(
                gguf_name(T.FFN_DOWN_EXP, bid, ".weight"), T.FFN_DOWN_EXP, bid, shape, (name,)
            )
        ]
    half = (shape[0], shape[1] // 2, shape[2])
    return [
        PlannedTensor(gguf_name(kind, bid, ".weight"), kind, bid, half, (name,), transform)
        for kind, transform in ((T.FFN_GATE_EXP, FUSED_GATE), (T.FFN_UP_EXP, FUSED_UP))
    ]


def _plan_in_out_experts(name, bid, proj, shape) -> list[PlannedTensor]:
    """gpt-oss dequantized by transformers: gate_up_proj [E, H, 2F] with gate in the even
    columns, down_proj [E, F, H] (inputs first); each expert is transposed on its way."""
    e, rows, cols = shape
    if proj == "down_proj":
        parts = [(T.FFN_DOWN_EXP, IN_OUT, (e, cols, rows))]
    else:
        half = (e, cols // 2, rows)
        parts = [(T.FFN_GATE_EXP, IN_OUT_GATE, half), (T.FFN_UP_EXP, IN_OUT_UP, half)]
    return [
        PlannedTensor(gguf_name(kind, bid, ".weight"), kind, bid, out_shape, (name,), transform)
        for kind, transform, out_shape in parts
    ]


def _plan_packed_experts(ckpt, spec, name, bid, proj, suffix) -> list[PlannedTensor]:
    """gpt-oss as published: MXFP4 `{proj}_blocks` [E, rows, G, 16] with `{proj}_scales`
    [E, rows, G], and float `{proj}_bias` [E, rows]; gate_up rows interleaved."""
    if suffix == SCALES_SUFFIX:
        return []  # read with its blocks
    shape = tuple(ckpt.shape(name))
    if suffix == BLOCKS_SUFFIX:
        scales = name.removesuffix(BLOCKS_SUFFIX) + SCALES_SUFFIX
        if len(shape) != 4 or scales not in ckpt or tuple(ckpt.shape(scales)) != shape[:3]:
            raise BadModelFile(
                f"{name} has shape {list(shape)} without matching {scales}: not MXFP4 blocks.",
                "The checkpoint is incomplete or damaged; re-download it.",
            )
        shape = (shape[0], shape[1], shape[2] * shape[3] * 2)  # 2 values per byte
    split = proj == "gate_up_proj" and spec.gate_up_interleaved
    if proj == "gate_up_proj" and (shape[1] % 2 or not split):
        raise BadModelFile(
            f"{name} has shape {list(shape)}, which does not split into gate and up rows.",
            "The checkpoint is damaged or from an unknown layout.",
        )
    kind_suffix = ".bias" if suffix == "_bias" else ".weight"
    if suffix == "_bias":
        transforms = (EVEN_ROWS, ODD_ROWS) if split else ("",)
    else:
        transforms = (MXFP4_GATE, MXFP4_UP) if split else (MXFP4_ROWS,)
    kinds = (T.FFN_GATE_EXP, T.FFN_UP_EXP) if split else (T.FFN_DOWN_EXP,)
    out_shape = (shape[0], shape[1] // len(kinds), *shape[2:])
    carried = GGMLQuantizationType.MXFP4 if suffix == BLOCKS_SUFFIX else None
    return [
        PlannedTensor(
            gguf_name(kind, bid, kind_suffix), kind, bid, out_shape, (name,), transform,
            carried=carried,
        )
        for kind, transform in zip(kinds, transforms, strict=True)
    ]  # fmt: skip


def proportional_rope(config: dict) -> dict | None:
    """Gemma 4's global-layer RoPE parameters when they are "proportional"."""
    per_type = config.get("rope_parameters")
    full = per_type.get("full_attention") if isinstance(per_type, dict) else None
    return full if isinstance(full, dict) and full.get("rope_type") == "proportional" else None


def _plan_rope_freqs(config: dict) -> list[PlannedTensor]:
    """Llama 3.1+ "llama3" rope scaling travels as a rope_freqs tensor (llama.py
    generate_extra_tensors), and so does Gemma 4's proportional RoPE (gemma.py)."""
    if proportional_rope(config) is not None:
        dim = int(config.get("global_head_dim") or 512)
        name = gguf_name(T.ROPE_FREQS, None, ".weight")
        return [PlannedTensor(name, T.ROPE_FREQS, None, (dim // 2,), (), PROPORTIONAL_FREQS)]
    if str(rope_parameters(config)["rope_type"]).lower() != "llama3":
        return []
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return [
        PlannedTensor(
            gguf_name(T.ROPE_FREQS, None, ".weight"),
            T.ROPE_FREQS,
            None,
            (head_dim // 2,),
            (),
            ROPE_FREQS,
        )
    ]


def _check_complete(ckpt: HFCheckpoint, spec: ArchSpec, planned: list[PlannedTensor]) -> None:
    config = ckpt.config
    have = {(p.kind, p.bid) for p in planned}
    hidden, vocab = int(config["hidden_size"]), int(config["vocab_size"])
    needed = [(T.TOKEN_EMBD, None), (T.OUTPUT_NORM, None)]
    if not config.get("tie_word_embeddings"):
        needed.append((T.OUTPUT, None))
    # the norm before the FFN: ffn_norm, or post_attention_norm where llama.cpp names it so (GLM)
    ffn_norm = spec.layer_tensors.get("post_attention_layernorm.weight", (T.FFN_NORM,))[0]
    for bid in range(int(config["num_hidden_layers"])):
        needed += [
            (ffn_norm if k == T.FFN_NORM else k, bid)
            for k in spec.required_layer_kinds(config, bid)
        ]
        if not spec.ffn_in_every_layer:
            continue  # required_layer_kinds names all a layer needs (Nemotron-H's one mixer)
        if spec.is_moe_layer(config, bid):
            fused = ((T.FFN_GATE_UP_EXP, bid),) if spec.gguf_fused_gate_up else ()
            needed += [
                (T.FFN_GATE_INP, bid),
                *(fused or ((T.FFN_GATE_EXP, bid), (T.FFN_UP_EXP, bid))),
                (T.FFN_DOWN_EXP, bid),
            ]
            if spec.dense_mlp_beside_experts:
                needed += [(T.FFN_GATE, bid), (T.FFN_UP, bid), (T.FFN_DOWN, bid)]
        else:
            needed += [(T.FFN_GATE, bid), (T.FFN_UP, bid), (T.FFN_DOWN, bid)]
    missing = [gguf_name(k, b, "") for k, b in needed if (k, b) not in have]
    if missing:
        raise BadModelFile(
            f"The checkpoint lacks tensors a {spec.model_type} model needs: {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''} (GGUF names).",
            "The download is incomplete or the config.json belongs to another model.",
        )
    expected = {T.TOKEN_EMBD: (vocab, hidden), T.OUTPUT: (vocab, hidden), T.OUTPUT_NORM: (hidden,)}
    expected.update({T.ATTN_NORM: (hidden,), T.FFN_NORM: (hidden,), T.ATTN_POST_NORM: (hidden,)})
    expected[ffn_norm] = (hidden,)
    for p in planned:
        if p.kind in expected and p.shape != expected[p.kind]:
            raise BadModelFile(
                f"{p.sources[0]} has shape {list(p.shape)}, expected {list(expected[p.kind])} "
                f"(hidden_size {hidden}, vocab_size {vocab} in config.json).",
                "The checkpoint does not match its config.json; re-download it.",
            )
