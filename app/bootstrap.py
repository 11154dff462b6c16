"""Set up Itamae's environment from nothing, then start the app or run the tests.

    python3 app/bootstrap.py start [itamae options]   # set up .venv, then run `itamae`
    python3 app/bootstrap.py test  [pytest options]   # set up .venv with test extras, run pytest

Standard library only: it runs before any dependency exists. It exists because two
installs need care that `pip install -e .` alone does not give:
- torch: pinned to 2.13.0 and installed first, so that the dependency resolver keeps it
  instead of pulling another multi-GB build (ITAMAE_TORCH overrides the requirement,
  ITAMAE_TORCH_INDEX names a wheel index such as PyTorch's CPU or CUDA one).
- llama-cpp-python compiles llama.cpp. A native x86 build compiles in AMX tile
  instructions, which some virtual CPUs refuse (SIGILL at load); the flags below keep
  AVX2/AVX-512 and leave AMX out. Set CMAKE_ARGS yourself for CUDA or Metal (README).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("ITAMAE_VENV", REPO / ".venv"))
TORCH = os.environ.get("ITAMAE_TORCH", "torch==2.13.0")
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def _python() -> Path:
    sub = "Scripts/python.exe" if os.name == "nt" else "bin/python"
    return VENV / sub


def _run(*cmd: str, env: dict | None = None) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env, cwd=REPO)


def llama_cmake_args() -> str:
    if os.environ.get("CMAKE_ARGS"):
        return os.environ["CMAKE_ARGS"]
    if platform.machine().lower() in ("x86_64", "amd64") and sys.platform != "darwin":
        return f"-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='{NO_AMX}' -DCMAKE_CXX_FLAGS='{NO_AMX}'"
    return ""  # Apple silicon builds Metal by default; other CPUs build natively


def _install_browser() -> None:
    """The UI tests drive Debian's Chromium; install it where apt and root are at hand."""
    if shutil.which("chromium") or not shutil.which("apt-get") or os.geteuid() != 0:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run("apt-get", "update", "-qq", env=env)
    _run("apt-get", "install", "-y", "-qq", "chromium", "fonts-noto-cjk", env=env)


def setup(with_tests: bool) -> None:
    if not _python().exists():
        venv.create(VENV, with_pip=True)
    py = str(_python())
    _run(py, "-m", "pip", "install", "-q", "--upgrade", "pip", "setuptools", "wheel")
    torch_cmd = [py, "-m", "pip", "install", "-q", TORCH]
    if os.environ.get("ITAMAE_TORCH_INDEX"):
        torch_cmd += ["--index-url", os.environ["ITAMAE_TORCH_INDEX"]]
    _run(*torch_cmd)
    env = dict(os.environ, CMAKE_ARGS=llama_cmake_args())
    target = ".[test]" if with_tests else "."
    _run(py, "-m", "pip", "install", "-q", "-e", target, env=env)
    if with_tests:
        _install_browser()
        # The reference tests read llama.cpp's own converter and vocabularies from the
        # llama-cpp-python source distribution; fetch it now so that the tests run offline.
        _run(py, "-m", "tests.fixtures.llamacpp_reference")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("start", "test", "setup"):
        print(__doc__)
        return 2
    action, rest = argv[0], argv[1:]
    setup(with_tests=action == "test")
    if action == "setup":
        return 0
    if action == "start":
        return subprocess.call([str(_python()), "-m", "app.cli", *rest], cwd=REPO)
    return subprocess.call([str(_python()), "-m", "pytest", *rest], cwd=REPO)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
