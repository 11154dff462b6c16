"""The memory plan's KV + recurrent state + compute buffer against what llama.cpp allocates.

llama.cpp's own log is the reference: the "KV buffer size" lines (one per cache: the SWA and
full caches of gpt-oss, the MLA latent and indexer key caches of DeepSeek-V3.2), the
recurrent state's "RS buffer size" (Qwen3-Next, Qwen3.5-MoE, Nemotron-H), DeepSeek-V4's
compressor states ("DSV4 ... state buffer size") and the "compute buffer size"
ggml's scheduler reserved for the worst-case ubatch. The plan must be within 10% on their
sum, at a short and a longer context, on GGUFs converted by Itamae from the tiny fixtures
(where the compute buffer is most of the sum) and on a synthetic Qwen3-MoE with the real
152k Qwen vocabulary (where the output logits dominate it).
"""

from __future__ import annotations

import pytest

from engine.llamacpp.devices import Hardware
from engine.llamacpp.gguf_layout import read_gguf_layout
from engine.llamacpp.memory_plan import plan_memory
from engine.llamacpp.native import LoadOptions, NativeModel
from tests.llamacpp_synthetic import find_vocab_gguf, write_synthetic_moe

convert_module = pytest.importorskip("converters.conversion.convert")

FAMILIES = (
    "qwen3_next",  # recurrent state + full-attention KV
    "qwen3_5_moe",
    "gpt_oss",  # sliding-window layers: llama.cpp's SWA cache and a second mask
    "deepseek_v32",  # MLA latent + indexer key cache, indexer scores in the compute buffer
    "deepseek_v4",  # K-only window cache, compressed + indexer caches, compressor states
    "qwen3_moe",  # all softmax attention from here on
    "olmoe",
    "deepseek_v3",
    "glm4_moe",
    "kimi_k2",  # 384 experts: the router's rows are a third of the peak
    "llama",  # dense
    "gemma4",  # sliding-window layers with their own head size beside global ones
    "llama4",  # no window key: llama.cpp's loader chunks its RoPE layers by itself
    "llama4_chunked",
    "nemotron_h",  # Mamba-2 states (no recurrent_layers key) + KV for its attention layer
)
CONTEXTS = (512, 4096)
TOLERANCE = 0.10


def _mib(line: str) -> float:
    return float(line.split("size =")[1].split("MiB")[0]) * 2**20


# what each part is summed from; DeepSeek-V4 logs its compressor states as "DSV4 csa state
# buffer size" beside the recurrent states' "RS buffer size"
PARTS = {
    "kv": ("KV buffer size =",),
    "state": ("RS buffer size =", "state buffer size ="),
    "compute": ("compute buffer size =",),
}


def _load_log(path, n_ctx: int) -> list[str]:
    model = NativeModel(path, LoadOptions(n_ctx=n_ctx, gpu_layers=0, threads=2))
    log = model.load_log
    model.close()
    return log


def _lines(log: list[str], part: str) -> list[str]:
    return [x for x in log if any(marker in x for marker in PARTS[part])]


def allocated(path, n_ctx: int, log: list[str] | None = None) -> dict[str, float]:
    """Bytes llama.cpp reports for a context of n_ctx (CPU only, default ubatch 512)."""
    log = _load_log(path, n_ctx) if log is None else log
    return {part: sum(_mib(x) for x in _lines(log, part)) for part in PARTS}


def planned(path, n_ctx: int) -> dict[str, float]:
    plan = plan_memory(read_gguf_layout(path), Hardware.of(ram_gb=64), n_ctx=n_ctx)
    return {"kv": plan.kv_bytes, "state": plan.state_bytes, "compute": plan.compute_bytes}


def assert_plan_matches(path, n_ctx: int) -> None:
    log = _load_log(path, n_ctx)
    ours, theirs = planned(path, n_ctx), allocated(path, n_ctx, log)
    assert theirs["compute"] > 0 and theirs["kv"] > 0, theirs
    detail = f"{path.name} at {n_ctx}: plan {ours}, llama.cpp {theirs}"
    assert sum(ours.values()) == pytest.approx(sum(theirs.values()), rel=TOLERANCE), detail
    # the parts too: a compute estimate that is off can't hide behind an exact KV cache
    # (the log prints MiB to two decimals: up to 0.005 MiB off per line summed)
    rounding = {part: 0.006 * 2**20 * max(1, len(_lines(log, part))) for part in PARTS}
    assert ours["kv"] == pytest.approx(theirs["kv"], rel=0.01, abs=rounding["kv"]), detail
    assert ours["state"] == pytest.approx(theirs["state"], abs=rounding["state"]), detail
    assert ours["compute"] == pytest.approx(theirs["compute"], rel=TOLERANCE), detail


@pytest.fixture(scope="module")
def gguf_of(hf_checkpoint, tmp_path_factory):
    folder, made = tmp_path_factory.mktemp("plan-gguf"), {}

    def make(arch):
        if arch not in made:
            made[arch] = folder / f"{arch}-f32.gguf"
            convert_module.convert(_fixture(hf_checkpoint, arch), made[arch], "F32")
        return made[arch]

    return make


def _fixture(hf_checkpoint, arch: str):
    from tests.fixtures import llama4, nemotron_h

    if arch == "nemotron_h":
        return nemotron_h.fixture_path()
    return llama4.fixture_path(arch) if arch in llama4.VARIANTS else hf_checkpoint(arch)


@pytest.mark.slow
@pytest.mark.parametrize("n_ctx", CONTEXTS)
@pytest.mark.parametrize("arch", FAMILIES)
def test_plan_is_what_llama_cpp_allocates(arch, n_ctx, gguf_of):
    assert_plan_matches(gguf_of(arch), n_ctx)


@pytest.mark.slow
@pytest.mark.parametrize("n_ctx", (512, 16384))
def test_plan_on_a_real_vocabulary(n_ctx, tmp_path_factory):
    """hidden 1024, 32 experts top-4 and Qwen2's 151,936 tokens: the logits of a 512-token
    ubatch alone are ~300 MiB; at 16k the masks and KV cache grow beside them."""
    vocab = find_vocab_gguf()
    if vocab is None:
        pytest.skip("llama.cpp's models/ggml-vocab-qwen2.gguf is not unpacked here")
    path = tmp_path_factory.mktemp("synthetic") / "qwen3moe-1024.gguf"
    if not path.exists():
        write_synthetic_moe(path, vocab_gguf=vocab, hidden=1024, layers=2, experts=32,
                            top_k=4, expert_ffn=768, heads=16, kv_heads=4)  # fmt: skip
    assert_plan_matches(path, n_ctx)
