"""A llama.cpp model and context opened through llama-cpp-python's low-level binding.

The high-level `llama_cpp.Llama` is not used: it cannot pass tensor buffer overrides (the
expert placement), and the backend wants its own token loop for cancellation and stats.
Calls follow llama.cpp's examples/simple/simple.cpp: load the model, make a context,
tokenize, `llama_decode` batches, sample, `llama_token_to_piece`.
"""

from __future__ import annotations

import ctypes
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np

from converters.core.errors import BadModelFile, ItamaeError, UnsupportedArchitecture

from . import logs
from .devices import BufferOverrides, expert_overrides_to_cpu

CACHE_TYPES = {"f32": 0, "f16": 1, "q8_0": 8, "q4_0": 2, "bf16": 30}  # enum ggml_type
OVERRIDE_LINE = re.compile(r"tensor (\S+) \(.*\) buffer type overridden to (\S+)")
# "load_tensors:   CUDA0 model buffer size =  1234.56 MiB" (src/llama-model.cpp)
MODEL_BUFFER_LINE = re.compile(r"(\S+) model buffer size =\s*([\d.]+) MiB")


class DecodeAborted(Exception):
    """llama_decode stopped because the abort callback asked it to (a cancelled prefill)."""


@dataclass
class LoadOptions:
    n_ctx: int
    gpu_layers: int
    expert_patterns: list[str] = field(default_factory=list)  # regexes kept in CPU RAM
    threads: int = 4
    cache_type: str = "f16"
    n_batch: int = 512
    kv_overrides: dict[str, int] = field(default_factory=dict)  # integer metadata overrides
    eval_callback: object = None  # a ggml_backend_sched_eval_callback (expert_usage.py)


class NativeModel:
    """Owns llama_model + llama_context; everything here is a thin call into llama.cpp."""

    def __init__(self, path: Path, options: LoadOptions):
        self.path, self.options = path, options
        self.model = self.ctx = None
        self.load_log: list[str] = []
        # held around every call that uses the context, and by close(): a close from another
        # thread (the app unloading a model) waits for the token in flight, never frees under it
        self.lock = threading.RLock()
        self._overrides: BufferOverrides = expert_overrides_to_cpu(options.expert_patterns)
        self._kv_array = _kv_override_array(options.kv_overrides)
        logs.install()
        llama_cpp.llama_backend_init()
        with logs.captured() as lines:
            try:
                self.model = llama_cpp.llama_model_load_from_file(
                    str(path).encode(), self._model_params()
                )
                if self.model:
                    self.ctx = llama_cpp.llama_init_from_model(self.model, self._context_params())
            finally:
                self.load_log = list(lines)
        if not self.model:
            raise _load_error(path, self.load_log)
        if not self.ctx:
            self.close()
            raise ItamaeError(
                f"llama.cpp could not make a {options.n_ctx}-token context for {path.name}.",
                "Try a shorter context (n_ctx) or free some memory.",
            )
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx = llama_cpp.llama_n_ctx(self.ctx)
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self._pieces: dict[tuple[int, bool], bytes] = {}
        self._abort_flag = None
        self._abort_cb = llama_cpp.ggml_abort_callback(self._should_abort)

    def _model_params(self):
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = self.options.gpu_layers
        params.tensor_buft_overrides = self._overrides.address
        if self._kv_array is not None:
            params.kv_overrides = self._kv_array
        return params

    def _context_params(self):
        o = self.options
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = o.n_ctx
        params.n_batch = params.n_ubatch = o.n_batch
        params.n_threads = params.n_threads_batch = o.threads
        params.type_k = params.type_v = CACHE_TYPES[o.cache_type]
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
        params.no_perf = True
        if o.eval_callback is not None:
            params.cb_eval = o.eval_callback
            params.cb_eval_user_data = None
        return params

    # -- placement report ------------------------------------------------------------------

    def overridden_tensors(self) -> dict[str, str]:
        """Tensor name -> buffer type, for every tensor an override placed (from the log)."""
        found = (OVERRIDE_LINE.search(line) for line in self.load_log)
        return {m.group(1): m.group(2) for m in found if m}

    def model_buffers_mib(self) -> dict[str, float]:
        """Weight buffers llama.cpp allocated, by buffer type (CPU_Mapped, CUDA0, ...)."""
        sizes: dict[str, float] = {}
        for match in (MODEL_BUFFER_LINE.search(line) for line in self.load_log):
            if match:
                sizes[match.group(1)] = sizes.get(match.group(1), 0.0) + float(match.group(2))
        return sizes

    # -- text ------------------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        for _ in range(2):
            buffer = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(
                self.vocab, data, len(data), buffer, capacity, add_special, parse_special
            )
            if n >= 0:
                return list(buffer[:n])
            capacity = -n
        raise ItamaeError(f"llama.cpp could not tokenize a {len(data)}-byte text.", "")

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token (a vocabulary entry never changes: cached per id)."""
        key = (token, special)
        cached = self._pieces.get(key)
        if cached is None:
            cached = self._pieces[key] = self._token_to_piece(token, special)
        return cached

    def _token_to_piece(self, token: int, special: bool) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, 64, 0, special)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, -n, 0, special)
        return buffer.raw[:n]

    def token_text(self, token: int) -> str:
        if token < 0 or token >= self.n_vocab:
            return ""
        return (llama_cpp.llama_vocab_get_text(self.vocab, token) or b"").decode(errors="replace")

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def chat_template(self) -> str:
        raw = llama_cpp.llama_model_chat_template(self.model, None)
        return raw.decode("utf-8") if raw else ""

    def special_tokens(self) -> tuple[str, str]:
        """(bos, eos) token strings, as chat templates reference them."""
        bos = llama_cpp.llama_vocab_bos(self.vocab)
        eos = llama_cpp.llama_vocab_eos(self.vocab)
        return self.token_text(bos), self.token_text(eos)

    # -- evaluation ------------------------------------------------------------------------

    def decode(self, tokens: list[int], abort_flag=None) -> None:
        """Evaluate `tokens` at the end of the cache; logits of the last one become current.
        With `abort_flag` (a threading.Event), llama.cpp checks it between graph nodes; the
        check costs a Python call per node, so it is only armed for prompt prefill."""
        array = (llama_cpp.llama_token * len(tokens))(*tokens)
        batch = llama_cpp.llama_batch_get_one(array, len(tokens))
        with self.lock:
            self._check_open()
            if abort_flag is not None:
                self._abort_flag = abort_flag
                llama_cpp.llama_set_abort_callback(self.ctx, self._abort_cb, None)
            try:
                status = llama_cpp.llama_decode(self.ctx, batch)
            finally:
                if abort_flag is not None:
                    null = llama_cpp.ggml_abort_callback()
                    llama_cpp.llama_set_abort_callback(self.ctx, null, None)
                    self._abort_flag = None
        if status == 2:
            raise DecodeAborted()
        if status != 0:
            raise ItamaeError(
                f"llama.cpp failed to evaluate {len(tokens)} tokens (llama_decode returned "
                f"{status}).",
                "The context may be full: start a new conversation or load a longer context.",
            )

    def sample(self, chain) -> int:
        """Draw with a llama_sampler chain from the last decoded position's logits."""
        with self.lock:
            self._check_open()
            return llama_cpp.llama_sampler_sample(chain, self.ctx, -1)

    def last_logits(self) -> np.ndarray:
        """A copy of the last decoded position's logits, [n_vocab] float32."""
        with self.lock:
            self._check_open()
            pointer = llama_cpp.llama_get_logits_ith(self.ctx, -1)
            return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def _check_open(self) -> None:
        if not self.ctx:
            raise ItamaeError("The model was closed during generation.", "Load it again.")

    def _should_abort(self, _data) -> bool:
        flag = self._abort_flag
        return bool(flag is not None and flag.is_set())

    def forget_from(self, position: int) -> bool:
        """Drop cached positions >= `position`; False if this model's cache cannot."""
        with self.lock:
            return bool(self.ctx) and bool(
                llama_cpp.llama_memory_seq_rm(self.memory, 0, position, -1)
            )

    def forget_all(self) -> None:
        with self.lock:
            if self.ctx:
                llama_cpp.llama_memory_clear(self.memory, True)

    def close(self) -> None:
        with self.lock:
            if self.ctx:
                llama_cpp.llama_free(self.ctx)
                self.ctx = None
            if self.model:
                llama_cpp.llama_model_free(self.model)
                self.model = None


def _kv_override_array(overrides: dict[str, int]):
    if not overrides:
        return None
    array = (llama_cpp.llama_model_kv_override * (len(overrides) + 1))()
    for slot, (key, value) in zip(array, overrides.items(), strict=False):
        slot.key = key.encode()
        slot.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
        slot.value.val_i64 = int(value)
    array[len(overrides)].key = b""  # an empty key ends the list (include/llama.h)
    return array


def _load_error(path: Path, log: list[str]) -> ItamaeError:
    text = "".join(log)
    arch = re.search(r"unknown model architecture: '([^']+)'", text)
    if arch:
        return UnsupportedArchitecture(
            f"The llama.cpp in this installation (llama-cpp-python {llama_cpp.__version__}) "
            f"does not know the architecture {arch.group(1)!r} of {path.name}.",
            "Upgrade llama-cpp-python, or convert the original model for the torch engine.",
        )
    reason = next((line.strip() for line in reversed(log) if "error" in line.lower()), "")
    return BadModelFile(
        f"llama.cpp could not load {path.name}" + (f": {reason}" if reason else "."),
        "Check that the file is complete (compare its size with the source), or convert again.",
    )
