"""Shared test set-up: offline everywhere, fixtures built once per builder version."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Every test runs offline: nothing may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Compiled expert kernels (engine/torch/compiled.py) are kept beside the fixtures, so a test
# run, and the subprocesses it starts with their own ITAMAE_HOME, compiles each shape once.
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR",
    str(Path(__file__).resolve().parents[1] / ".itamae-cache" / "inductor"),
)
# the int4 decode kernel (engine/torch/int4_kernel.py), built once for every test run
os.environ.setdefault(
    "ITAMAE_KERNEL_DIR", str(Path(__file__).resolve().parents[1] / ".itamae-cache" / "kernels")
)


@pytest.fixture(scope="session")
def hf_checkpoint():
    """A callable: hf_checkpoint("mixtral") -> Path of that tiny hub-format checkpoint."""
    from tests.fixtures.checkpoints import fixture_path

    return fixture_path
