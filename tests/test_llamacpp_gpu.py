"""Expert placement on a GPU build of llama-cpp-python (skipped on CPU-only builds).

What llama.cpp reports it allocated is the reference: with every block offloaded, keeping
the routed experts in CPU RAM (`cpu_moe`, like `--cpu-moe` / `--n-cpu-moe N`) must move
exactly the experts' bytes out of the GPU's model buffer, and the planner, given less VRAM
than the model needs, must choose a placement llama.cpp then loads within that VRAM.

    CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-deps \\
        --no-binary :all: llama-cpp-python==0.3.36
    pytest tests/test_llamacpp_gpu.py -v
"""

from __future__ import annotations

import pytest

from engine.llamacpp.backend import load
from engine.llamacpp.devices import GpuMemory, Hardware, detect_hardware
from engine.llamacpp.placement import place
from engine.types import GenerationRequest, Message, SamplingParams

llama_cpp = pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.skipif(
    not llama_cpp.llama_supports_gpu_offload(),
    reason="needs a GPU build of llama-cpp-python (CMAKE_ARGS=-DGGML_CUDA=on)",
)
MIB = 2**20


@pytest.fixture(scope="module")
def moe_gguf(hf_checkpoint, tmp_path_factory):
    convert = pytest.importorskip("converters.conversion.convert").convert
    path = tmp_path_factory.mktemp("gpu") / "qwen3_moe-f32.gguf"
    convert(hf_checkpoint("qwen3_moe"), path, "F32")
    return path


def gpu_mib(backend) -> float:
    # CPU, CPU_Mapped, CPU_REPACK and CUDA_Host (pinned) buffers are all host memory
    buffers = backend.native.model_buffers_mib()
    return sum(size for name, size in buffers.items() if not ("CPU" in name or "Host" in name))


def greedy_tokens(backend, n=4):
    chat = [Message("user", "Hello! こんにちは")]
    req = GenerationRequest(messages=chat, sampling=SamplingParams(temperature=0, max_tokens=n))
    return list(backend.stream(req))[-1].token_ids


def test_cpu_moe_moves_exactly_the_experts_out_of_vram(moe_gguf):
    full = load(moe_gguf, n_ctx=512, gpu_layers=99, cpu_moe=False)
    every = load(moe_gguf, n_ctx=512, gpu_layers=99, cpu_moe=True)
    first = load(moe_gguf, n_ctx=512, gpu_layers=99, cpu_moe=1)
    try:
        layout = full.plan.layout
        experts_mib = layout.expert_bytes / MIB
        print(f"\nGPU model buffers: all {gpu_mib(full):.2f} MiB, cpu_moe {gpu_mib(every):.2f} "
              f"MiB, n_cpu_moe=1 {gpu_mib(first):.2f} MiB; experts {experts_mib:.2f} MiB")  # fmt: skip
        assert any("offloaded" in line for line in full.native.load_log)
        assert gpu_mib(full) - gpu_mib(every) == pytest.approx(experts_mib, abs=0.5)
        block0 = layout.blocks[0].expert_bytes / MIB
        assert gpu_mib(full) - gpu_mib(first) == pytest.approx(block0, abs=0.5)
        assert every.expert_placement_report()["effect"] == "experts kept in CPU RAM"
        assert len(every.expert_placement_report()["tensors_in_cpu_ram"]) == 3 * layout.n_layers
        reference = greedy_tokens(full)
        assert greedy_tokens(every) == reference and greedy_tokens(first) == reference
    finally:
        for backend in (full, every, first):
            backend.close()


def test_planned_placement_fits_the_vram_it_was_given(moe_gguf):
    real = detect_hardware()
    assert real.gpu_offload and real.gpus, "a GPU build should report its GPU's memory"
    probe = load(moe_gguf, n_ctx=512, gpu_layers=99, cpu_moe=False)
    layout = probe.plan.layout
    probe.close()
    # VRAM for everything but two blocks' experts: the planner must keep >= 2 blocks' in RAM
    everything = place(layout, real, 512, layout.n_layers + 1, 0).gpu_bytes
    vram = everything - 2 * layout.blocks[0].expert_bytes + 1024
    tight = Hardware(
        real.ram_available_bytes, real.ram_total_bytes, [GpuMemory("test", vram, vram)]
    )
    backend = load(moe_gguf, n_ctx=512, hardware=tight)
    try:
        plan = backend.plan
        print("\n" + plan.describe())
        assert plan.gpu_layers == layout.n_layers + 1 and plan.cpu_moe_layers == 2
        assert gpu_mib(backend) * MIB <= plan.gpu_bytes
        assert greedy_tokens(backend)
    finally:
        backend.close()
