"""Which routed experts llama.cpp chose, token by token (opt-in: `record_experts=True`).

llama.cpp names the router's choice `ffn_moe_topk-<block>` in every MoE block's graph
(src/llama-graph.cpp, build_moe_ffn): an I32 tensor [experts_per_token, n_tokens], a view
into the router's argsort. The scheduler's eval callback (`llama_context_params.cb_eval`,
as llama.cpp's examples/eval-callback uses it) is asked about every graph node; it asks
for these tensors only and counts their ids. Asking makes the scheduler stop at each of
them, so decoding is slower while recording; without the option nothing is installed.
"""

from __future__ import annotations

import ctypes
import logging
from functools import lru_cache

import llama_cpp
import numpy as np

logger = logging.getLogger("itamae.llamacpp")
TOPK_PREFIX = b"ffn_moe_topk-"


class _TensorHead(ctypes.Structure):
    """The leading fields of struct ggml_tensor (ggml/include/ggml.h): type, buffer, ne, nb."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
    ]


@lru_cache(maxsize=1)
def _ggml():
    from llama_cpp import _ggml as ggml_module

    lib = ggml_module.libggml
    lib.ggml_get_name.argtypes, lib.ggml_get_name.restype = [ctypes.c_void_p], ctypes.c_char_p
    lib.ggml_nbytes.argtypes, lib.ggml_nbytes.restype = [ctypes.c_void_p], ctypes.c_size_t
    lib.ggml_backend_tensor_get.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_size_t,
    ]
    lib.ggml_backend_tensor_get.restype = None
    return lib


class ExpertCounter:
    """counts[block, expert]: tokens routed to that expert since the last reset()."""

    def __init__(self, n_blocks: int, n_experts: int):
        self.counts = np.zeros((n_blocks, max(n_experts, 1)), dtype=np.int64)
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_tensor)
        _ggml()

    def reset(self) -> None:
        self.counts[:] = 0

    def for_moe_blocks(self, moe_blocks: list[int]) -> list[list[int]]:
        return [self.counts[b].tolist() for b in moe_blocks]

    def _on_tensor(self, tensor, ask: bool, _user_data) -> bool:
        # ask: "do you want this node's data?"; then: "continue?" (False would stop compute)
        try:
            name = _ggml().ggml_get_name(tensor) or b""
            if ask:
                return name.startswith(TOPK_PREFIX)
            if name.startswith(TOPK_PREFIX):
                self._record(tensor, int(name[len(TOPK_PREFIX) :]))
        except Exception:  # never let a bookkeeping error stop llama.cpp mid-graph
            logger.exception("expert recording failed")
        return True

    def _record(self, tensor, block: int) -> None:
        head = _TensorHead.from_address(tensor)
        used, n_tokens, row_stride = head.ne[0], head.ne[1], head.nb[1]
        size = _ggml().ggml_nbytes(tensor)
        raw = (ctypes.c_uint8 * size)()
        _ggml().ggml_backend_tensor_get(tensor, raw, 0, size)
        # rows are `used` int32 ids each, `row_stride` bytes apart (a view of the argsort)
        ids = np.lib.stride_tricks.as_strided(
            np.frombuffer(raw, dtype=np.int32),
            shape=(n_tokens, used),
            strides=(row_stride, 4),
            writeable=False,
        )
        if 0 <= block < len(self.counts):
            np.add.at(self.counts[block], ids.ravel(), 1)
