"""What llama.cpp can run on here (free RAM, each GPU's free VRAM), and the tensor buffer
overrides that place experts.

llama-cpp-python's high-level `Llama` does not expose `tensor_buft_overrides`, and its
binding declares the field as a bare pointer. This module builds the NULL-terminated
`llama_model_tensor_buft_override` array (include/llama.h) itself, with the CPU buffer type
found through ggml's device registry (ggml/include/ggml-backend.h), the same way
llama.cpp's `--cpu-moe` / `--n-cpu-moe N` do in common/arg.cpp.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from functools import lru_cache

import psutil

GIB = 1024**3
# enum ggml_backend_dev_type (ggml-backend.h)
DEVICE_CPU, DEVICE_GPU = 0, 1


@dataclass
class GpuMemory:
    name: str
    free_bytes: int
    total_bytes: int


@dataclass
class Hardware:
    """A snapshot of what memory is free. `gpu_offload` is False on a CPU-only build."""

    ram_available_bytes: int
    ram_total_bytes: int = 0
    gpus: list[GpuMemory] = field(default_factory=list)
    gpu_offload: bool = True

    @property
    def vram_free_bytes(self) -> int:
        # llama.cpp's default split mode spreads blocks over every GPU, so free VRAM adds up.
        return sum(g.free_bytes for g in self.gpus) if self.gpu_offload else 0

    @classmethod
    def of(cls, ram_gb: float, vram_gb: float = 0.0) -> Hardware:
        """Synthetic hardware for planning ahead ("would this fit on 8 GB VRAM + 32 GB RAM?")."""
        gpus = [GpuMemory("GPU", int(vram_gb * GIB), int(vram_gb * GIB))] if vram_gb else []
        return cls(int(ram_gb * GIB), int(ram_gb * GIB), gpus, gpu_offload=bool(gpus))


class TensorBufferOverride(ctypes.Structure):
    """struct llama_model_tensor_buft_override { const char * pattern; buft_t buft; }"""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


@lru_cache(maxsize=1)
def _ggml() -> ctypes.CDLL:
    from llama_cpp import _ggml as ggml_module

    lib = ggml_module.libggml
    signatures = {
        "ggml_backend_dev_count": ([], ctypes.c_size_t),
        "ggml_backend_dev_get": ([ctypes.c_size_t], ctypes.c_void_p),
        "ggml_backend_dev_type": ([ctypes.c_void_p], ctypes.c_int),
        "ggml_backend_dev_description": ([ctypes.c_void_p], ctypes.c_char_p),
        "ggml_backend_dev_memory": (
            [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)],
            None,
        ),
        "ggml_backend_dev_by_type": ([ctypes.c_int], ctypes.c_void_p),
        "ggml_backend_dev_buffer_type": ([ctypes.c_void_p], ctypes.c_void_p),
        "ggml_backend_buft_name": ([ctypes.c_void_p], ctypes.c_char_p),
    }
    for name, (argtypes, restype) in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, restype
    return lib


def gpu_offload_supported() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def gpu_memory() -> list[GpuMemory]:
    """Free and total memory of each GPU llama.cpp can offload to (empty on CPU builds)."""
    lib = _ggml()
    gpus = []
    for index in range(lib.ggml_backend_dev_count()):
        device = lib.ggml_backend_dev_get(index)
        if lib.ggml_backend_dev_type(device) != DEVICE_GPU:
            continue
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(device, ctypes.byref(free), ctypes.byref(total))
        name = (lib.ggml_backend_dev_description(device) or b"GPU").decode(errors="replace")
        gpus.append(GpuMemory(name, free.value, total.value))
    return gpus


def detect_hardware() -> Hardware:
    memory = psutil.virtual_memory()
    try:
        offload = gpu_offload_supported()
        gpus = gpu_memory() if offload else []
    except (ImportError, OSError, AttributeError):
        offload, gpus = False, []
    return Hardware(memory.available, memory.total, gpus, gpu_offload=offload and bool(gpus))


def cpu_buffer_type() -> int:
    lib = _ggml()
    device = lib.ggml_backend_dev_by_type(DEVICE_CPU)
    if not device:
        raise RuntimeError("llama.cpp was built without its CPU backend")
    return lib.ggml_backend_dev_buffer_type(device)


@dataclass
class BufferOverrides:
    """A NULL-terminated override array and the bytes it points to, kept alive together
    for as long as llama.cpp may read them (the model's lifetime)."""

    array: ctypes.Array | None
    patterns: list[bytes]

    @property
    def address(self) -> int | None:
        return ctypes.addressof(self.array) if self.array is not None else None


def expert_overrides_to_cpu(patterns: list[str]) -> BufferOverrides:
    """Overrides that keep every tensor matching one of `patterns` in CPU RAM."""
    if not patterns:
        return BufferOverrides(None, [])
    encoded = [p.encode() for p in patterns]
    array = (TensorBufferOverride * (len(encoded) + 1))()
    buft = cpu_buffer_type()
    for slot, pattern in zip(array, encoded, strict=False):
        slot.pattern, slot.buft = pattern, buft
    return BufferOverrides(array, encoded)  # the last slot stays {NULL, NULL}
