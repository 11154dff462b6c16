"""Building the engine's own CPU kernels (C++ through torch's extension builder).

Where no maintained library offers a decode kernel at the speed the engine needs
(int4_kernel.py says what was measured), the engine compiles a small C++ source of its own
with `torch.utils.cpp_extension`: once per machine, into `kernels/` under Itamae's data
folder (ITAMAE_KERNEL_DIR moves it), named by the source's hash and the torch version so a
new build of either compiles again. The sources use `at::parallel_for`, which splits the
work over torch's OpenMP threads only when the source is compiled with OpenMP: without
`-fopenmp` the header's loop runs on one thread. Linked against `libgomp.so.1`, the
extension shares the runtime torch already loaded (torch ships it in torch/lib), so its
threads are torch's threads, as Inductor's generated kernels do.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from pathlib import Path

import torch

OPENMP = ["-fopenmp"]


def kernel_dir() -> Path:
    if os.environ.get("ITAMAE_KERNEL_DIR"):
        return Path(os.environ["ITAMAE_KERNEL_DIR"])
    from .compiled import itamae_data_dir

    return itamae_data_dir() / "kernels"


def cpu_flags() -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo names them (empty where it is unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def missing_flags(needed: tuple[str, ...]) -> list[str]:
    """Which of a kernel's CPU features this CPU lacks."""
    flags = cpu_flags()
    return [f for f in needed if f not in flags]


def unavailable_reason(switch: str, needed_flags: tuple[str, ...]) -> str | None:
    """Why a kernel of ours cannot run here before building it: "off" where its environment
    switch (e.g. ITAMAE_INT8_KERNEL=0) turns it off, else the platform or the CPU's missing
    features; None where it may be built."""
    if os.environ.get(switch, "1").strip().lower() in ("0", "false", "off", "no"):
        return "off"  # asked for: no warning
    if not sys.platform.startswith("linux"):
        return "built on Linux only"
    missing = missing_flags(needed_flags)
    if missing:
        return f"this CPU lacks {', '.join(missing)}"
    return None


def load_kernel(what: str, switch: str, needed_flags: tuple[str, ...], prefix: str,
                source: Path, cflags: list[str], on_load, instead: str) -> bool:  # fmt: skip
    """Build and load one of the engine's kernels: True once its operators are registered
    (`on_load` then adds what torch.compile needs, e.g. fake implementations); False where
    it cannot run, with one warning that says why and what runs `instead` (none where its
    environment switch turned it off)."""
    reason = unavailable_reason(switch, needed_flags)
    if reason is None:
        reason = build(prefix, source, cflags)
        if reason is None:
            on_load()
    if reason is not None and reason != "off":
        warnings.warn(
            f"The {what} is not available ({reason}); {instead}. Set {switch}=0 to skip the "
            "attempt.",
            RuntimeWarning,
            stacklevel=4,  # the caller of the kernel module's available()
        )
    return reason is None


def build(prefix: str, source: Path, cflags: list[str]) -> str | None:
    """Compile (or find compiled) and load `source` as a library of torch operators (its
    TORCH_LIBRARY block registers them): None, or the reason it failed."""
    digest = hashlib.sha256(source.read_bytes() + " ".join(cflags).encode()
                            + torch.__version__.encode()).hexdigest()[:12]  # fmt: skip
    name = f"{prefix}_{digest}"
    folder = kernel_dir() / name
    try:
        from torch.utils import cpp_extension

        _ninja_on_path()
        folder.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the builder's notes about compiler versions
            cpp_extension.load(name=name, sources=[str(source)], extra_cflags=cflags + OPENMP,
                               extra_ldflags=OPENMP, build_directory=str(folder),
                               is_python_module=False, verbose=False)  # fmt: skip
    except Exception as e:  # no compiler, no ninja, a failed build: many kinds
        text = str(e).strip().splitlines()
        return f"{type(e).__name__}: {text[-1] if text else ''}"[:300]
    return None


def _ninja_on_path() -> None:
    """torch's builder runs `ninja` from PATH; the `ninja` package (a dependency) puts it in
    the environment's bin folder, which is not on PATH when Python runs without the
    environment activated (`.venv/bin/python -m app.cli`)."""
    try:
        import ninja  # the PyPI package's binary
    except ImportError:
        return  # a system ninja, if any, is found on PATH as before
    folder = str(ninja.BIN_DIR)
    paths = os.environ.get("PATH", "").split(os.pathsep)
    if folder not in paths:
        os.environ["PATH"] = os.pathsep.join([folder, *paths])
