"""Decode's routed experts as one compiled kernel: gather, dequantize and dot product fused.

A decode step multiplies one activation row by the K chosen experts' weights, so it is
bound by how fast those weights stream from memory. Torch has no grouped low-bit CPU
kernel; run expert by expert, `_weight_int8pack_mm` pays a call, a thread-pool wake-up and
a bf16 conversion of the weights per expert and projection. Written as gather + multiply +
sum over the stacked `[N, out, in]` rows (gpt-fast's MoE: experts indexed by the routing
result), Inductor's CPU backend turns the whole top-k step into two parallel C++ loops
that read each chosen int8 row once, convert it in registers and accumulate in float32,
with the activation between them; nothing the size of a weight is materialised.

Measured on this 2-core machine (bench shape: hidden 1024, expert FFN 768, top-4 of 32,
int8 per-row scales; one thread, CPU time, best of 8 interleaved rounds): 1.2-1.4x the
per-expert `_weight_int8pack_mm` path, about 11 GB/s against 12 GB/s that one core reads
in a plain float32 sum. int4 is not compiled: written the same way (nibbles unpacked in
int32 registers, group scales broadcast) the kernel reached 0.58x of torch's
`_weight_int4pack_mm_for_cpu` with float32 scales and 0.06x with the stored float16 ones
(Inductor converts a broadcast float16 scalar in software), so int4 experts run through a
hand-written AVX-512 VNNI kernel instead (int4_kernel.py; `for_scheme` hands it out).
int8 experts of bf16 models run int8_kernel.py's VNNI kernel inside the compiled function
(`routed_int8_vnni`: two calls for all K, 1.0-1.15x this gather in bench_int8_kernel.py,
but on the stored rows without FBGEMM's copies); it rounds the activation to 8 bits, so
float32 models keep the gather above.

Compiled once per process and shape; Inductor's FX graph cache on disk (TORCHINDUCTOR_CACHE_DIR,
else `inductor-cache` under Itamae's data folder, which ITAMAE_HOME moves) makes a second
start pay seconds instead of a cold compile. The expert count and K are dynamic
dimensions, so one graph serves the fast tier's slots, the memory-mapped file and any
number of chosen experts from 2 up (1 is a second graph), and every expert's output is
the same bits whichever of them it came from: what keeps outputs placement-independent.
Where compiling fails (no C++ compiler, an unsupported torch), `FusedExperts` says why once
and the engine runs today's per-expert kernels; ITAMAE_COMPILE=0 or the backend option
`compile=False` turns it off, and "auto" (the default) leaves experts under 1 MiB alone.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import platformdirs
import torch
import torch.nn.functional as F

COMPILED_SCHEMES = ("int8_row", "float")  # int4_group: see the module docstring
# "auto" compiles only experts of at least this many bytes: on the test fixtures' experts
# (hidden and FFN 256, int8: 192 KiB) the compiled kernel measured 1.07x the per-expert path,
# not worth a compile of 10-60 s per shape; on the bench model's (2.3 MiB) it is the win above.
AUTO_MIN_EXPERT_BYTES = 1 << 20


def itamae_data_dir() -> Path:
    """The data folder app/settings.py uses (ITAMAE_HOME moves it)."""
    home = os.environ.get("ITAMAE_HOME")
    return Path(home).expanduser() if home else Path(platformdirs.user_data_dir("itamae"))


def inductor_cache_dir() -> Path:
    """Where Inductor keeps compiled kernels between runs."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    return itamae_data_dir() / "inductor-cache"


def compile_wanted(option: object = "auto", expert_bytes: int = AUTO_MIN_EXPERT_BYTES) -> bool:
    """The backend option `compile` (auto | True | False) for experts of `expert_bytes`;
    ITAMAE_COMPILE=0 turns it off whatever the option."""
    if os.environ.get("ITAMAE_COMPILE", "1").strip().lower() in ("0", "false", "off", "no"):
        return False
    if isinstance(option, str):
        option = option.strip().lower()
        if option == "auto":
            return expert_bytes >= AUTO_MIN_EXPERT_BYTES
        return option in ("1", "true", "on", "yes")
    return bool(option)


def _matvec_rows(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """w [K, R, C] (int8 or float), x [K or 1, C] float32 -> [K, R]: one reduction loop."""
    return (w.float() * x[:, None, :]).sum(-1)


def routed_int8(x, gate_up_q, gate_up_scale, down_q, down_scale, idx, act):
    """x [H] float32; gate_up_q [N, 2I, H] int8 with scale [N, 2I]; down_q [N, H, I] with
    scale [N, H]; idx [K] rows to use -> [K, H] float32, one row per chosen expert."""
    h = _matvec_rows(gate_up_q[idx], x[None]) * gate_up_scale[idx]  # [K, 2I]
    gate, up = h.chunk(2, dim=-1)
    a = act(gate) * up  # [K, I]
    return _matvec_rows(down_q[idx], a) * down_scale[idx]  # [K, H]


def routed_int8_vnni(x, gate_up_q, gate_up_scale, down_q, down_scale, idx, act):
    """routed_int8 through int8_kernel.py's VNNI kernel (bf16 models): two calls for all K,
    the activation between them generated by Inductor as in routed_int8."""
    gate, up = torch.ops.itamae_int8.matvec(x[None], gate_up_q, gate_up_scale, idx).chunk(2, -1)
    return torch.ops.itamae_int8.matvec(act(gate) * up, down_q, down_scale, idx)


def routed_float(x, gate_up, down, idx, act):
    """As routed_int8 for float rows: gate_up [N, 2I, H], down [N, H, I]."""
    gate, up = _matvec_rows(gate_up[idx], x[None]).chunk(2, dim=-1)
    return _matvec_rows(down[idx], act(gate) * up)


def weighted_sum(weights: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """weights [K] float32, y [K, H] float32 (rows in ascending expert order) -> [1, H]: the
    chosen experts' outputs added one at a time in row order. Both the MoE block's path and
    the compiled step's in-graph gather sum this way, so that where an expert was computed
    (slot, file, inside or outside a graph) never changes the bits; a matmul or `.sum(0)`
    is free to pick its own order (and did, differently in and out of Inductor)."""
    terms = weights[:, None] * y  # [K, H]
    out = terms[0]
    for k in range(1, terms.shape[0]):
        out = out + terms[k]
    return out[None]


_ARGS = {
    "int8_row": ("gate_up.q", "gate_up.scale", "down.q", "down.scale"),
    "float": ("gate_up", "down"),
    # not an Inductor kernel: int4_kernel.py's experts op, which the compiled step calls
    "int4_group": tuple(f"{m}.{p}" for m in ("gate_up", "down") for p in ("q", "scale", "zero")),
}
_ARGS["int8_vnni"] = _ARGS["int8_row"]  # the int8_row scheme's kernel for bf16 models
_KERNELS = {"int8_row": routed_int8, "int8_vnni": routed_int8_vnni, "float": routed_float}
_ACTS = {"silu": F.silu, "gelu": F.gelu}


def setup_inductor() -> None:
    """Inductor's settings for Itamae's compiled kernels (compiled_step.py uses them too)."""
    torch._inductor.config.fx_graph_cache = True
    # every model shape loaded in this process is a graph of the same function: let a
    # process that loads several models (tests, a model switch in the app) keep compiling
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(inductor_cache_dir()))


@functools.cache
def _compiled(scheme: str, act: str):
    """One compiled callable per scheme and activation for the whole process."""
    setup_inductor()
    kernel, activation = _KERNELS[scheme], _ACTS[act]

    def routed(x, *weights_and_idx):
        return kernel(x, *weights_and_idx, activation)

    return torch.compile(routed, dynamic=False)


class FusedExperts:
    """`__call__(x, views, idx) -> [K, H]` float32 for one token through rows `idx` of
    stacked expert views (experts.stacked_views); `None` from `for_scheme` where no
    compiled kernel applies, and `failed` (with the reason) once compiling did not work."""

    def __init__(self, scheme: str, act: str, kernel: str | None = None):
        self.scheme, self.act = scheme, act
        self.kernel = kernel or scheme  # which of _KERNELS: int8_vnni for int8_row in bf16
        self.failed: str | None = None
        self._fn = _compiled(self.kernel, act)

    @classmethod
    def for_scheme(cls, scheme: str, act: str, device: torch.device,
                   dtype: torch.dtype | None = None) -> FusedExperts | None:  # fmt: skip
        if scheme == "int4_group":  # not generated by Inductor: see the module docstring
            from .int4_kernel import Int4Experts

            return Int4Experts.for_scheme(scheme, act, device)
        # CPU only: CUDA would go through Triton, which no machine here has run
        if device.type != "cpu" or scheme not in COMPILED_SCHEMES or act not in _ACTS:
            return None
        if scheme == "int8_row" and dtype == torch.bfloat16:
            from . import int8_kernel  # rounds the activation to 8 bits: bf16 models only

            if int8_kernel.available():
                return cls(scheme, act, "int8_vnni")
        return cls(scheme, act)

    @staticmethod
    def applies(views: dict) -> bool:
        """Every layer's experts fit (Int4Experts checks its kernel's shapes)."""
        return True

    def __call__(self, x: torch.Tensor, views: dict, idx: torch.Tensor) -> torch.Tensor | None:
        """None where the compiled kernel is unavailable: the caller runs the plain path."""
        if self.failed is not None:
            return None
        weights = [views[name] for name in _ARGS[self.kernel]]
        for t in (*weights, idx):
            if t.shape[0] > 1:  # slots, expert count and K vary: one graph for all of them
                torch._dynamo.maybe_mark_dynamic(t, 0)
        try:
            return self._fn(x.reshape(-1).float(), *weights, idx)
        except Exception as e:  # Inductor raises many kinds (compiler missing, codegen bugs)
            self.failed = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            warnings.warn(
                f"Compiling the expert kernel failed ({self.failed}); decoding with the "
                "per-expert kernels instead (slower). Set ITAMAE_COMPILE=0 to skip the attempt.",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
