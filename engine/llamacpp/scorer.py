"""Score a GGUF in llama.cpp: every position's logits, and the experts each token went to.

Logits: one `llama_decode` per window with every position marked as an output
(`llama_batch.logits[i] = 1`), read back with `llama_get_logits` ([n_outputs, n_vocab]).
The KV cache is F32 so that the cache's own rounding does not count as quantization error.

Routing: llama.cpp names the tensor of chosen experts `ffn_moe_topk-<layer>` in every
MoE layer (`build_moe_ffn` in src/llama-graph.cpp: `ggml_argsort_top_k` of the selection
probabilities, I32 [n_expert_used, n_tokens]). The context's evaluation callback
(`cb_eval`, the hook llama.cpp's own imatrix tool uses) is asked about each graph tensor
(`ask` = true) and, for the ones it wants, called again once the tensor is computed; the
tensor is then copied out with `ggml_backend_tensor_get`. The top-k view is not contiguous
(each token's row keeps the stride of the full expert argsort), so rows are read with the
strides `nb` of the `struct ggml_tensor` header (ggml/include/ggml.h).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import llama_cpp
import numpy as np

from converters.core.errors import ItamaeError
from engine.types import Scored

from .native import LoadOptions, NativeModel

TOPK_TENSOR = b"ffn_moe_topk-"
GGML_TYPE_I32 = 26  # enum ggml_type in ggml/include/ggml.h


class TensorHead(ctypes.Structure):
    """The leading fields of `struct ggml_tensor` (ggml.h): type, buffer, ne[4], nb[4]."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
    ]


def _ggml_base():
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_get_name.restype = ctypes.c_char_p
    lib.ggml_get_name.argtypes = [ctypes.c_void_p]
    lib.ggml_nbytes.restype = ctypes.c_size_t
    lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
    lib.ggml_nelements.restype = ctypes.c_int64
    lib.ggml_nelements.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_backend_tensor_get.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t
    ]  # fmt: skip
    return lib


class RoutingRecorder:
    """Collects `ffn_moe_topk-<layer>` tensors as llama.cpp computes them."""

    def __init__(self):
        self.ggml = _ggml_base()
        self.chunks: dict[int, list[np.ndarray]] = {}
        self.error = ""
        self.ignore = False  # set when routing turned out unreadable: logits only
        # Kept on the instance: llama.cpp holds only the C pointer, so the Python
        # callable must outlive every decode.
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_tensor)

    def _on_tensor(self, tensor, ask, _user_data) -> bool:
        name = self.ggml.ggml_get_name(tensor) or b""
        if self.ignore or not name.startswith(TOPK_TENSOR):
            return not ask  # not wanted when asked; once computed, True = go on
        if ask:
            return True
        try:
            layer = int(name[len(TOPK_TENSOR) :])
            self.chunks.setdefault(layer, []).append(self._read(tensor))
        except Exception as e:  # an exception must not cross into C; report it after decode
            self.error = f"{name.decode(errors='replace')}: {e}"
        return True

    def _read(self, tensor) -> np.ndarray:
        head = TensorHead.from_address(tensor)
        if head.type != GGML_TYPE_I32:
            raise ValueError(f"expected I32 expert ids, got ggml type {head.type}")
        k, n_tokens = head.ne[0], head.ne[1]
        if self.ggml.ggml_nelements(tensor) != k * n_tokens * head.ne[2] * head.ne[3]:
            # the header layout is not the one this reader knows (a newer ggml?)
            raise ValueError("the ggml_tensor header does not have the expected layout")
        nbytes = self.ggml.ggml_nbytes(tensor)
        raw = np.empty(nbytes // 4 + 1, dtype=np.int32)
        self.ggml.ggml_backend_tensor_get(tensor, raw.ctypes.data, 0, nbytes)
        row = head.nb[1] // 4  # int32 elements between one token's experts and the next's
        index = np.arange(n_tokens)[:, None] * row + np.arange(k)[None, :] * (head.nb[0] // 4)
        return raw[index].astype(np.int64)  # [n_tokens, k]

    def take(self) -> dict[int, np.ndarray]:
        if self.error:
            error, self.error, self.chunks = self.error, "", {}
            raise ItamaeError(f"Reading llama.cpp's expert routing failed ({error}).", "")
        taken = {layer: np.concatenate(parts) for layer, parts in sorted(self.chunks.items())}
        self.chunks = {}
        return taken


class _ScoringModel(NativeModel):
    """The llama.cpp backend's model loader, with the routing callback in its context."""

    def __init__(self, path: Path, options: LoadOptions, recorder: RoutingRecorder):
        self.recorder = recorder
        super().__init__(path, options)

    def _context_params(self):
        params = super()._context_params()
        # llama.cpp's CPU flash attention rounds K and V through F16; off, attention stays F32
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.cb_eval = self.recorder.callback
        params.cb_eval_user_data = None
        return params


class LlamaCppScorer:
    name = "llama.cpp"
    compute = "llama.cpp CPU, F32 KV cache, flash attention off"

    def __init__(self, path: Path, window: int, threads: int = 0):
        self.recorder = RoutingRecorder()
        threads = threads or max(1, min(8, os.cpu_count() or 1))
        options = LoadOptions(
            n_ctx=window, gpu_layers=0, threads=threads, cache_type="f32", n_batch=window
        )
        self.native = _ScoringModel(path, options, self.recorder)
        self.vocab_size = self.native.n_vocab
        self.context_length = int(llama_cpp.llama_model_n_ctx_train(self.native.model))
        self.window = window
        self.routing_note = ""
        self.moe_layers = self._moe_layers()

    def _moe_layers(self) -> list[int]:
        """Which layers route: found by scoring two tokens once (the graph names them). If
        the routing cannot be read in this llama.cpp build, logits are still compared and
        the report says why routing is missing."""
        self.native.forget_all()
        self._decode([0, 0])
        self.native.forget_all()
        try:
            return sorted(self.recorder.take())
        except ItamaeError as e:
            self.recorder.ignore = True
            self.routing_note = str(e)
            return []

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        # special tokens written in the text (ChatML markers) are parsed, as HF tokenizers do
        return self.native.tokenize(text, add_special, parse_special=True)

    def _decode(self, tokens: list[int]) -> np.ndarray:
        n = len(tokens)
        if n > self.window:
            raise ItamaeError(f"A window of {n} tokens is longer than {self.window}.", "")
        batch = llama_cpp.llama_batch_init(n, 0, 1)
        try:
            for i, token in enumerate(tokens):
                batch.token[i] = token
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1  # every position is an output
            batch.n_tokens = n
            status = llama_cpp.llama_decode(self.native.ctx, batch)
        finally:
            llama_cpp.llama_batch_free(batch)
        if status != 0:
            raise ItamaeError(f"llama.cpp failed to evaluate {n} tokens (status {status}).", "")
        pointer = llama_cpp.llama_get_logits(self.native.ctx)
        return np.ctypeslib.as_array(pointer, shape=(n, self.vocab_size)).copy()

    def score(self, tokens: list[int]) -> Scored:
        self.native.forget_all()  # each window starts from an empty cache
        logits = self._decode(tokens)
        return Scored(logits=logits, routing=self.recorder.take())

    def close(self) -> None:
        self.native.close()


def open_scorer(path: Path, window: int, threads: int = 0) -> LlamaCppScorer:
    """engine.scoring.open_scorer's door into this backend (as backend.load is for chat)."""
    return LlamaCppScorer(path, window, threads)
