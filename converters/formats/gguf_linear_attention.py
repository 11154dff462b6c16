"""Gated DeltaNet tensors on their way into a GGUF file, as llama.cpp's converter writes them
(conversion/qwen.py: `Qwen3NextModel.modify_tensors` and `_LinearAttentionVReorderBase`).

- Qwen3-Next's in_proj_qkvz holds [q, k, v, z] rows per key head: llama.cpp wants every q,
  then every k, then every v (attn_qkv) and the z rows apart (attn_gate).
- Qwen3.5 stores value heads grouped by key head ([K0: v0..v(r-1), K1: ...]); llama.cpp wants
  them tiled ([v0 of K0, K1, ...], [v1 of ...]) so that ggml broadcasts the key heads: every
  tensor indexed by value head (the v rows of in_proj_qkv, in_proj_z, in_proj_b/a, A_log,
  dt_bias, the conv's v channels, out_proj's columns) is reordered.
- A = -exp(A_log); conv1d [C, 1, K] -> [C, K]; zero-centred RMSNorm weights w -> 1 + w.
"""

from __future__ import annotations

import torch

from converters.core.errors import BadModelFile

QKVZ_QKV, QKVZ_Z = "qkvz_qkv", "qkvz_z"  # the two parts of Qwen3-Next's in_proj_qkvz


def qkvz_dims(config: dict) -> tuple[int, int, int]:
    """(key heads, q/k rows per key head, v/z rows per key head)."""
    k_heads = int(config["linear_num_key_heads"])
    v_per_k = int(config["linear_num_value_heads"]) // k_heads
    return (
        k_heads,
        int(config["linear_key_head_dim"]),
        v_per_k * int(config["linear_value_head_dim"]),
    )


def qkvz_shapes(config: dict, name: str, shape: tuple[int, ...]):
    """(attn_qkv shape, attn_gate shape) of an in_proj_qkvz of `shape`."""
    k_heads, qk, vz = qkvz_dims(config)
    if len(shape) != 2 or shape[0] != k_heads * (2 * qk + 2 * vz):
        raise BadModelFile(
            f"{name} has shape {list(shape)}, expected [{k_heads * (2 * qk + 2 * vz)}, hidden] "
            "from the linear attention's head counts in config.json.",
            "The checkpoint does not match its config.json.",
        )
    return (k_heads * (2 * qk + vz), shape[1]), (k_heads * vz, shape[1])


def split_qkvz(data: torch.Tensor, config: dict, part: str) -> torch.Tensor:
    k_heads, qk, vz = qkvz_dims(config)
    q, k, v, z = data.view(k_heads, 2 * qk + 2 * vz, -1).split([qk, qk, vz, vz], dim=1)
    if part == QKVZ_Z:
        return z.reshape(-1, data.shape[-1])
    return torch.cat([t.reshape(-1, data.shape[-1]) for t in (q, k, v)])


def tile_value_heads(data: torch.Tensor, config: dict, dim: int, head_dim: int) -> torch.Tensor:
    """Along `dim`, value heads grouped by key head -> tiled over key heads."""
    k_heads = int(config["linear_num_key_heads"])
    per = int(config["linear_num_value_heads"]) // k_heads
    if per == 1:
        return data
    shape = list(data.shape)
    grouped = data.reshape(*shape[:dim], k_heads, per, head_dim, *shape[dim + 1 :])
    return grouped.transpose(dim, dim + 1).reshape(shape)


def v_reordered(data: torch.Tensor, config: dict, what: str) -> torch.Tensor:
    """`what`: "v_rows" (the rows after q and k: in_proj_qkv, or the conv's channels),
    "rows" (in_proj_z), "heads" (one row or value per head: in_proj_b/a, A_log, dt_bias),
    "columns" (out_proj)."""
    v_dim = int(config["linear_value_head_dim"])
    if what == "heads":
        return tile_value_heads(data, config, 0, 1)
    if what == "rows":
        return tile_value_heads(data, config, 0, v_dim)
    if what == "columns":
        return tile_value_heads(data, config, 1, v_dim)
    qk = 2 * int(config["linear_num_key_heads"]) * int(config["linear_key_head_dim"])
    return torch.cat([data[:qk], tile_value_heads(data[qk:], config, 0, v_dim)])
