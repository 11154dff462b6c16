"""The memory planner on synthetic hardware and published model shapes, and on real GGUF headers.

Model shapes are the published configs (Qwen3-30B-A3B, Mixtral-8x7B, DeepSeek-V3,
Llama-3-8B); bytes per weight are llama.cpp's quant averages. What llama.cpp itself
allocates for the KV cache is checked against its own log in test_llamacpp_backend.py.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from converters.core.errors import NotEnoughMemory
from engine.llamacpp.devices import GIB, Hardware
from engine.llamacpp.memory_plan import QUANT_LADDER, plan_memory, smaller_quant_that_fits
from engine.llamacpp.model_layout import BlockWeights, ModelLayout
from engine.llamacpp.placement import RAM_RESERVE_BYTES, compute_buffer_bytes, place

Q4_K_M = dict(QUANT_LADDER)["Q4_K_M"]
Q8_0 = dict(QUANT_LADDER)["Q8_0"]


def layout_from_config(
    name,
    *,
    layers,
    hidden,
    heads,
    kv_heads,
    head_dim,
    vocab,
    experts=0,
    top_k=0,
    expert_ffn=0,
    dense_ffn=0,
    shared_ffn=0,
    bpw=Q4_K_M,
    mla=None,
    context=32768,
):
    """A ModelLayout from Hugging Face config numbers, stored at `bpw` bits per weight."""
    if mla:  # DeepSeek: q_lora_rank, kv_lora_rank, qk_nope, qk_rope, v_head_dim
        q_lora, kv_lora, nope, rope, v_dim = mla
        attention = (
            hidden * q_lora
            + q_lora * heads * (nope + rope)
            + hidden * (kv_lora + rope)
            + kv_lora * heads * (nope + v_dim)
            + heads * v_dim * hidden
        )
        key_length, value_length, kv_heads_cached = kv_lora + rope, kv_lora, 1
    else:
        attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
        key_length = value_length = head_dim
        kv_heads_cached = kv_heads
    dense = attention + 3 * hidden * (dense_ffn + shared_ffn) + hidden * experts
    routed = 3 * hidden * expert_ffn * experts
    norms = 2 * hidden
    blocks = [
        BlockWeights(
            dense_bytes=int(dense * bpw / 8) + 4 * norms,
            expert_bytes=int(routed * bpw / 8),
            dense_params=dense + norms,
            expert_params=routed,
            norm_params=norms,
            norm_bytes=4 * norms,
        )
        for _ in range(layers)
    ]
    embedding = vocab * hidden
    return ModelLayout(
        name=name,
        arch="test",
        quant=f"{bpw} bpw",
        blocks=blocks,
        input_bytes=int(embedding * bpw / 8),
        output_bytes=int(embedding * bpw / 8),
        input_params=embedding,
        output_params=embedding,
        context_length=context,
        n_embd=hidden,
        n_vocab=vocab,
        n_head=heads,
        kv_heads=[kv_heads_cached] * layers,
        key_length=key_length,
        value_length=value_length,
        mla=bool(mla),
        n_experts=experts,
        experts_per_token=top_k,
        ffn_width=max(dense_ffn, expert_ffn * top_k),
    )


def qwen3_30b_a3b(bpw=Q4_K_M):  # Qwen/Qwen3-30B-A3B config.json
    return layout_from_config(
        "Qwen3-30B-A3B", layers=48, hidden=2048, heads=32, kv_heads=4, head_dim=128,
        vocab=151936, experts=128, top_k=8, expert_ffn=768, bpw=bpw, context=40960,
    )  # fmt: skip


def mixtral_8x7b(bpw=Q4_K_M):  # mistralai/Mixtral-8x7B-v0.1 config.json
    return layout_from_config(
        "Mixtral-8x7B", layers=32, hidden=4096, heads=32, kv_heads=8, head_dim=128,
        vocab=32000, experts=8, top_k=2, expert_ffn=14336, bpw=bpw,
    )  # fmt: skip


def llama3_8b(bpw=Q4_K_M):  # meta-llama/Llama-3.1-8B config.json
    return layout_from_config(
        "Llama-3-8B", layers=32, hidden=4096, heads=32, kv_heads=8, head_dim=128,
        vocab=128256, dense_ffn=14336, bpw=bpw, context=131072,
    )  # fmt: skip


def deepseek_v3(bpw=Q4_K_M):  # deepseek-ai/DeepSeek-V3 config.json (dense first 3 layers ignored)
    return layout_from_config(
        "DeepSeek-V3", layers=61, hidden=7168, heads=128, kv_heads=128, head_dim=128,
        vocab=129280, experts=256, top_k=8, expert_ffn=2048, shared_ffn=2048, bpw=bpw,
        mla=(1536, 512, 128, 64, 128), context=163840,
    )  # fmt: skip


def test_published_shapes_have_published_sizes():
    # sanity of the test layouts themselves: total parameters as published (+-3%)
    for layout, billions in ((qwen3_30b_a3b(), 30.5), (mixtral_8x7b(), 46.7), (llama3_8b(), 8.0)):
        assert layout.total_params / 1e9 == pytest.approx(billions, rel=0.03), layout.name


def test_everything_goes_to_a_gpu_that_holds_it():
    plan = plan_memory(qwen3_30b_a3b(), Hardware.of(ram_gb=32, vram_gb=24))
    assert plan.gpu_layers == 49 and plan.cpu_moe_layers == 0
    assert plan.expert_override_patterns() == []
    assert plan.fits and plan.n_ctx == 8192


def test_8gb_gpu_32gb_ram_keeps_the_fewest_experts_in_ram():
    layout, hardware = qwen3_30b_a3b(), Hardware.of(ram_gb=32, vram_gb=8)
    plan = plan_memory(layout, hardware)
    # attention and every dense part on the GPU, experts of the first N blocks in RAM
    assert plan.gpu_layers == layout.n_layers + 1
    assert 0 < plan.cpu_moe_layers < layout.n_layers
    assert plan.gpu_bytes <= 8 * GIB and plan.ram_bytes <= 32 * GIB
    fewer = place(layout, hardware, plan.n_ctx, plan.gpu_layers, plan.cpu_moe_layers - 1)
    assert fewer.gpu_bytes > hardware.vram_free_bytes  # N is as small as fits
    patterns = plan.expert_override_patterns()
    assert len(patterns) == plan.cpu_moe_layers
    assert re.search(patterns[0], "blk.0.ffn_up_exps.weight")
    assert not any(re.search(p, "blk.47.ffn_up_exps.weight") for p in patterns)
    assert not any(re.search(p, "blk.0.ffn_gate_inp.weight") for p in patterns)
    assert not any(re.search(p, "blk.0.ffn_up_shexp.weight") for p in patterns)
    # "blk.1" must not also catch blk.10-blk.19
    if plan.cpu_moe_layers <= 10:
        assert not any(re.search(p, "blk.10.ffn_down_exps.weight") for p in patterns)
    text = plan.describe()
    assert "n_gpu_layers 49" in text and "in CPU RAM" in text and "bottleneck" in text


def test_deepseek_v3_experts_go_to_ram_before_any_block_leaves_the_gpu():
    layout = deepseek_v3(bpw=dict(QUANT_LADDER)["Q2_K"])  # ~250 GB, ~4.5 GB of experts a block
    plan = plan_memory(layout, Hardware.of(ram_gb=512, vram_gb=24))
    assert plan.gpu_layers == layout.n_layers + 1 and 0 < plan.cpu_moe_layers < layout.n_layers
    assert plan.gpu_bytes <= 24 * GIB and plan.fits
    # a GPU too small for even the dense parts: all experts in RAM, then fewer blocks
    small = plan_memory(layout, Hardware.of(ram_gb=512, vram_gb=4))
    assert small.cpu_moe_layers == layout.n_layers and 0 < small.gpu_layers <= layout.n_layers
    assert small.expert_override_patterns() == [r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"]
    assert small.gpu_bytes <= 4 * GIB and small.fits
    assert "CPU RAM bandwidth" in small.bottleneck()


def test_dense_model_offloads_as_many_blocks_as_fit():
    layout = llama3_8b(bpw=16.0)  # F16, ~15 GiB
    plan = plan_memory(layout, Hardware.of(ram_gb=32, vram_gb=8))
    assert 0 < plan.gpu_layers < layout.n_layers and plan.cpu_moe_layers == 0
    more = place(layout, plan.hardware, plan.n_ctx, plan.gpu_layers + 1, 0)
    assert more.gpu_bytes > plan.hardware.vram_free_bytes


def test_cpu_only_16gb_runs_a_4bit_8b_model_in_ram():
    plan = plan_memory(llama3_8b(), Hardware.of(ram_gb=16))
    assert plan.gpu_layers == 0 and plan.gpu_bytes == 0 and plan.fits
    assert "no GPU offload" in plan.describe()


def test_cpu_only_16gb_refuses_a_30b_and_names_the_largest_quant_that_fits():
    layout, hardware = qwen3_30b_a3b(), Hardware.of(ram_gb=16)
    with pytest.raises(NotEnoughMemory) as refusal:
        plan_memory(layout, hardware)
    message = str(refusal.value)
    suggested = smaller_quant_that_fits(layout, hardware)
    assert suggested is not None and suggested.fits
    assert suggested.layout.quant in message and "itamae convert" in message
    assert "does not fit" in message and "16.00 GiB" in message
    # the largest ladder quant below Q4_K_M that fits, not just any
    names = [name for name, _ in QUANT_LADDER]
    bigger = names[names.index(suggested.layout.quant) - 1]
    if bigger != "Q4_K_M":
        bpw = dict(QUANT_LADDER)[bigger]
        assert not plan_memory(layout.requantized(bigger, bpw), hardware, check=False).fits


def test_a_plan_shown_without_the_check_says_it_does_not_fit():
    plan = plan_memory(qwen3_30b_a3b(), Hardware.of(ram_gb=16), check=False)
    assert not plan.fits
    assert "DOES NOT FIT" in plan.describe() and "--quant" in plan.describe()
    fitting = plan_memory(qwen3_30b_a3b(), Hardware.of(ram_gb=32))
    assert "DOES NOT FIT" not in fitting.describe()


def test_refusal_says_when_no_quant_fits():
    with pytest.raises(NotEnoughMemory, match="No llama.cpp quant"):
        plan_memory(deepseek_v3(), Hardware.of(ram_gb=16, vram_gb=8))


def test_context_shrinks_before_refusing_and_an_explicit_context_is_kept():
    layout = qwen3_30b_a3b()
    overhead = compute_buffer_bytes(layout, 2048) + RAM_RESERVE_BYTES
    ram = (layout.weight_bytes + layout.kv_cache_bytes(3000) + overhead) / GIB
    plan = plan_memory(layout, Hardware.of(ram_gb=ram))
    assert plan.n_ctx == 2048 and any("shortened" in n for n in plan.notes)
    with pytest.raises(NotEnoughMemory, match="32768-token context"):
        plan_memory(layout, Hardware.of(ram_gb=ram), n_ctx=32768)


def test_explicit_placement_is_kept_and_checked():
    layout = mixtral_8x7b()
    plan = plan_memory(layout, Hardware.of(ram_gb=64, vram_gb=24), gpu_layers=33, cpu_moe_layers=20)
    assert (plan.gpu_layers, plan.cpu_moe_layers) == (33, 20)
    with pytest.raises(NotEnoughMemory):
        plan_memory(layout, Hardware.of(ram_gb=64, vram_gb=8), gpu_layers=33, cpu_moe_layers=0)


def test_cpu_moe_on_a_cpu_only_machine_is_accepted_with_no_effect():
    plan = plan_memory(qwen3_30b_a3b(), Hardware.of(ram_gb=64), cpu_moe_layers=48)
    assert plan.gpu_layers == 0 and plan.fits
    assert any("no effect" in note for note in plan.notes)


def test_more_vram_never_puts_less_on_the_gpu():
    layout = mixtral_8x7b()
    previous = -1
    for vram in (0, 2, 4, 8, 12, 16, 24, 32, 48):
        plan = plan_memory(layout, Hardware.of(ram_gb=64, vram_gb=vram), n_ctx=4096)
        assert plan.gpu_bytes >= previous
        assert plan.gpu_bytes <= vram * GIB
        previous = plan.gpu_bytes


def test_mla_caches_one_latent_per_token_and_block():
    layout = deepseek_v3()
    # llama.cpp (src/llama-kv-cache.cpp): K only, kv_lora_rank + qk_rope_head_dim wide, f16
    assert layout.kv_cache_bytes(8192) == 61 * (512 + 64) * 2 * 8192
    mha = ModelLayout(**{**layout.__dict__, "mla": False, "kv_heads": [128] * 61,
                         "key_length": 192, "value_length": 128})  # fmt: skip
    assert mha.kv_cache_bytes(8192) > 60 * layout.kv_cache_bytes(8192)


def test_gqa_kv_cache_matches_the_published_figure():
    # Llama-3-8B, f16 cache: 32 layers x 8 KV heads x 128 x (K+V) x 2 bytes = 128 KiB/token
    assert llama3_8b().kv_cache_bytes(1) == 128 * 1024
    assert llama3_8b().kv_cache_bytes(1, "q8_0") == 128 * 1024 * 34 // 64


def test_requantized_layout_scales_matrices_but_not_norms():
    layout = qwen3_30b_a3b(bpw=Q8_0)
    smaller = layout.requantized("Q4_K_M", Q4_K_M)
    assert smaller.total_params == layout.total_params
    assert smaller.weight_bytes / layout.weight_bytes == pytest.approx(Q4_K_M / Q8_0, rel=0.01)
    assert smaller.blocks[0].norm_bytes == layout.blocks[0].norm_bytes


def test_plan_json_has_the_numbers_scripts_read():
    data = plan_memory(qwen3_30b_a3b(), Hardware.of(ram_gb=32, vram_gb=8)).to_json()
    for key in ("n_ctx", "n_gpu_layers", "cpu_moe_layers", "gpu_bytes", "ram_bytes", "kv_bytes"):
        assert isinstance(data[key], int)
    assert data["fits"] is True and data["bytes_per_token_ram"] > 0


def test_a_deepseek_v4_file_is_not_offered_a_quant_itamae_refuses_to_write():
    # Itamae's converter refuses llama.cpp-quantizer recipes (Q4_K_M, ...) for deepseek4,
    # so a V4 file that does not fit must not be sent to `itamae convert --quant q4_k_m`
    layout = dataclasses.replace(qwen3_30b_a3b(), arch="deepseek4")
    with pytest.raises(NotEnoughMemory) as refusal:
        plan_memory(layout, Hardware.of(ram_gb=16))
    message = str(refusal.value)
    assert "--quant" not in message and "only as Q8_0 or F32" in message
    assert smaller_quant_that_fits(layout, Hardware.of(ram_gb=16)) is None
