"""The engine's own kernels where they cannot be built: the tests of int4_kernel.py,
int8_kernel.py and kv_attention.py run a snippet in a fresh Python (the kernels are built
and loaded once per process) with the compiler pointing nowhere, or a switch set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def no_compiler(tmp_path: Path) -> dict[str, str]:
    """The environment of a machine without a C++ compiler and no kernel built yet."""
    return {"CXX": str(tmp_path / "no-such-compiler"), "ITAMAE_KERNEL_DIR": str(tmp_path / "k")}


def printed_in_fresh_python(code: str, env: dict[str, str]) -> list[str]:
    """What `code` prints, split into words, run in a new interpreter with `env` added."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=300, check=True)  # fmt: skip
    return out.stdout.split()
