"""The data of a planned GGUF tensor (converters/formats/gguf_plan.py), streamed.

One source tensor at a time, a stacked expert tensor `[n_experts, out, in]` one expert at
a time (each expert is a contiguous slice of the stacked tensor in ggml's layout, so it
can be encoded and written on its own), and a large plain tensor a few MB of rows at a
time; each piece is a separate read, so the writer can run several at once on threads
(gguf_writer.PiecesAhead). The plan's transform is applied on the way: llama.cpp's
rope permutation (conversion/llama.py `permute`), DeepSeek's kv_b_proj split, halves of
fused gate/up projections, MXFP4 blocks repacked for ggml, linear-attention reorders.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from gguf import GGMLQuantizationType

from converters.archs.rope import rope_parameters
from converters.archs.tensors import (
    ADD_ONE,
    COLUMN,
    GROUP_ROWS,
    NEG_EXP,
    PERMUTE_K,
    PERMUTE_Q,
    SQUEEZE,
    V_REORDER,
)
from converters.formats.gguf_linear_attention import QKVZ_QKV, QKVZ_Z, split_qkvz, v_reordered
from converters.formats.gguf_plan import (
    EVEN_ROWS,
    FP4_EXPERTS,
    FUSED_GATE,
    FUSED_UP,
    IN_OUT,
    IN_OUT_GATE,
    IN_OUT_UP,
    K_B,
    MXFP4_GATE,
    MXFP4_ROWS,
    MXFP4_UP,
    ODD_ROWS,
    PROPORTIONAL_FREQS,
    ROPE_FREQS,
    ROW_PARTS,
    V_B,
    PlannedTensor,
    proportional_rope,
)
from converters.formats.hf_reader import HFCheckpoint
from converters.formats.mxfp4 import (
    BLOCKS_SUFFIX,
    SCALES_SUFFIX,
    dequantize_mxfp4,
    packed_rows_as_blocks,
    to_ggml_blocks,
)


def permute_for_llama_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF stores q/k rows as [first halves | second halves] per head; llama.cpp's Llama rope
    wants them interleaved (llama.py `LlamaModel.permute`)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def llama3_rope_factors(config: dict) -> torch.Tensor:
    params = rope_parameters(config)
    base = params["rope_theta"] or 10000.0
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor = params.get("factor", 8.0)
    low, high = params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
    old_ctx = params.get("original_max_position_embeddings", 8192)
    wavelen = 2 * math.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    mid = 1 / ((1 - smooth) / factor + smooth)
    out = torch.where(wavelen < old_ctx / high, torch.ones_like(freqs), mid)
    return torch.where(wavelen > old_ctx / low, torch.full_like(freqs, factor), out)


def proportional_rope_factors(config: dict, half_head: int) -> torch.Tensor:
    """1 for the rotated pairs, 1e30 (no rotation) for the rest, as llama.cpp's Gemma4Model
    generate_extra_tensors writes them."""
    rotated = int(2 * half_head * float(proportional_rope(config)["partial_rotary_factor"]) / 2)
    return torch.tensor([1.0] * rotated + [1e30] * (half_head - rotated), dtype=torch.float32)


def _elementwise(data: torch.Tensor, p: PlannedTensor, config: dict) -> torch.Tensor:
    """The "+"-joined transforms of one tensor, in order (e.g. "squeeze+tile_v:v_rows")."""
    for step in filter(None, p.transform.split("+")):
        if step == ADD_ONE:
            data = data.float() + 1.0
        elif step == NEG_EXP:
            data = -torch.exp(data.float())
        elif step in (SQUEEZE, COLUMN, GROUP_ROWS):
            data = data.reshape(p.shape)
        elif step.startswith(V_REORDER):
            data = v_reordered(data, config, step.removeprefix(V_REORDER))
    return data


def piece_reads(ckpt: HFCheckpoint, p: PlannedTensor) -> list[Callable[[], torch.Tensor]]:
    """The pieces of `p` in storage order, each as a function that reads and transforms it:
    one per expert, per source, or per few MB of rows of a large plain tensor. They are
    independent, so a writer may run the next ones on threads while it writes one."""
    config = ckpt.config
    if p.transform == ROPE_FREQS:
        return [partial(llama3_rope_factors, config)]
    if p.transform == PROPORTIONAL_FREQS:
        return [partial(proportional_rope_factors, config, p.shape[0])]
    if p.transform in (MXFP4_ROWS, MXFP4_GATE, MXFP4_UP, IN_OUT, IN_OUT_GATE, IN_OUT_UP):
        return [partial(_expert_piece, ckpt, p, e) for e in range(p.shape[0])]
    if p.transform == FP4_EXPERTS:
        return [partial(_fp4_expert_piece, ckpt, p, source) for source in p.sources]
    if not p.transform and len(p.sources) == 1:
        return _row_pieces(ckpt, p.sources[0])
    return [partial(_source_piece, ckpt, p, source) for source in p.sources]


def _source_piece(ckpt: HFCheckpoint, p: PlannedTensor, source: str) -> torch.Tensor:
    config = ckpt.config
    data = ckpt.get(source)
    if p.transform in (EVEN_ROWS, ODD_ROWS):
        data = data[:, ROW_PARTS[p.transform]]
    if p.transform == PERMUTE_Q:
        data = permute_for_llama_rope(data, int(config["num_attention_heads"]))
    elif p.transform == PERMUTE_K:
        heads = config.get("num_key_value_heads") or config["num_attention_heads"]
        data = permute_for_llama_rope(data, int(heads))
    elif p.transform in (K_B, V_B):
        heads, nope = int(config["num_attention_heads"]), int(config["qk_nope_head_dim"])
        kv_b = data.view(heads, -1, data.shape[-1])  # [H, nope + v, kv_lora]
        data = kv_b[:, :nope].transpose(1, 2) if p.transform == K_B else kv_b[:, nope:]
    elif p.transform in (FUSED_GATE, FUSED_UP):
        rows = data.shape[1] // 2  # [E, 2F, H]: gate rows, then up rows
        data = data[:, :rows] if p.transform == FUSED_GATE else data[:, rows:]
    elif p.transform in (QKVZ_QKV, QKVZ_Z):
        data = split_qkvz(data, config, p.transform)
    else:
        data = _elementwise(data, p, config)
    return data.contiguous()


# A large tensor taken as it is (an embedding, an output head) is read this many source
# bytes at a time: memory holds a few pieces and their encodings, not the whole 0.9 GB
# tensor and its 0.5 GB Q8_0 encoding, and pieces are encoded on threads while the last
# one is written (gguf_writer). Rows are encoded independently, so the bytes are those of
# the whole tensor encoded at once.
ROW_PIECE_BYTES = 16 << 20


def _row_pieces(ckpt: HFCheckpoint, source: str) -> list[Callable[[], torch.Tensor]]:
    shape = ckpt.shape(source)
    row_bytes = math.prod(shape[1:]) * 4  # as float32: the width an encoding works in
    step = max(1, ROW_PIECE_BYTES // max(1, row_bytes))
    if len(shape) < 2 or ckpt.is_fp8(source) or step >= shape[0]:
        return [lambda: ckpt.get(source).contiguous()]
    return [
        partial(_rows, ckpt, source, slice(start, start + step))
        for start in range(0, shape[0], step)
    ]


def _rows(ckpt: HFCheckpoint, source: str, rows: slice) -> torch.Tensor:
    return ckpt.get_rows(source, rows).contiguous()


def _expert_piece(ckpt: HFCheckpoint, p: PlannedTensor, e: int) -> torch.Tensor:
    """Expert `e`: MXFP4 blocks repacked for ggml (or dequantized for a float recipe), or an
    [in, out] float expert transposed; gate/up rows picked out."""
    rows, source = ROW_PARTS[p.transform], p.sources[0]
    if p.transform in (IN_OUT, IN_OUT_GATE, IN_OUT_UP):
        return ckpt.get_row(source, e)[:, rows].t().contiguous()
    # only the rows this tensor takes (gate or up) are read, not the whole fused expert
    blocks = ckpt.get_rows(source, rows, e)
    scales = ckpt.get_rows(source.removesuffix(BLOCKS_SUFFIX) + SCALES_SUFFIX, rows, e)
    if p.qtype == GGMLQuantizationType.MXFP4:
        return to_ggml_blocks(blocks, scales)
    return dequantize_mxfp4(blocks, scales)


def _fp4_expert_piece(ckpt: HFCheckpoint, p: PlannedTensor, source: str) -> torch.Tensor:
    """DeepSeek-V4's FP4 experts, one source per expert: ggml's MXFP4 blocks (the codes and
    e8m0 scales moved, llama.cpp's `repack_mxfp4_blocks`), or their exact float values."""
    codes = ckpt.get(source)
    blocks, scales = packed_rows_as_blocks(codes, ckpt.get(ckpt.scale_of(source)))
    if p.qtype == GGMLQuantizationType.MXFP4:
        return to_ggml_blocks(blocks, scales)
    return dequantize_mxfp4(blocks, scales)
