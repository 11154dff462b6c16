"""The int8 decode kernel (engine/torch/int8_kernel.py) and where the engine runs it.

- The kernel against an exact reference on the rounded activation (float64 sums of the
  integer products, per block of 64), and against float32 dequantize-then-matmul within
  the rounding's bound; on stacked expert rows of the torch format (strided views, gathered
  by index), one row for all or one per chosen matrix, sizes that are no multiple of 64,
  and every int8 code (-128 too: the sign trick must stay exact).
- An output row is the same bits alone or gathered with others (placement invariance).
- It builds on this machine where the CPU has AVX-512 VNNI, and without a compiler the
  engine warns and runs FBGEMM's packed copy as before; ITAMAE_INT8_KERNEL=0 turns it off.
- In the engine (bf16): one-row Int8Linear runs it and makes no packed copy, the compiled
  step's head, q/k/v and o and the compiled experts run it, grouped and per-expert decode
  agree, an expert's rows are the same bits from a slot and from the file.
"""

from __future__ import annotations

import pytest
import torch

from converters.formats.torch_format import expert_layout, pack_expert
from converters.formats.torch_quant import quantize_int8_rows
from converters.formats.torch_writer import convert_to_torch
from engine.torch import int8_kernel, native_build
from engine.torch.compiled_step import _layer_params
from engine.torch.experts import stacked_views
from engine.torch.layers import Int8Linear
from tests.kernel_fallback import no_compiler, printed_in_fresh_python
from tests.test_torch_parity import (
    assert_expert_rows_same_from_slot_and_file,
    assert_grouped_agrees_with_per_expert,
    load_model,
    rel_err,
)

VNNI = not native_build.missing_flags(int8_kernel.CPU_FLAGS)
needs_vnni = pytest.mark.skipif(not VNNI, reason="the CPU lacks AVX-512 VNNI")
ZERO = torch.zeros(1, dtype=torch.long)


def rounded_reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [C], q [R, C] int8, scale [R] -> [R] float64: x rounded to int8 per block of 64 as
    the kernel documents it, the integer products summed exactly, then scaled."""
    c = x.shape[0]
    pad = -c % int8_kernel.BLOCK
    blocks = torch.nn.functional.pad(x.double(), (0, pad)).view(-1, int8_kernel.BLOCK)
    amax = blocks.abs().amax(-1, keepdim=True).float()
    codes = torch.where(amax > 0, torch.round(blocks.float() * (127 / amax)), 0).double()
    d = (amax / 127).double().view(-1)
    w = torch.nn.functional.pad(q.double(), (0, pad)).view(q.shape[0], -1, int8_kernel.BLOCK)
    return ((w * codes).sum(-1) * d).sum(-1) * scale.double()


@needs_vnni
def test_kernel_builds_on_this_cpu():
    assert int8_kernel.available()


@needs_vnni
@pytest.mark.parametrize("hidden, inter", [(256, 128), (1024, 768), (200, 100)])
def test_kernel_is_exact_on_the_rounded_activation(hidden, inter):
    """Expert rows as the torch format stores them; the kernel gathers experts 5, 0, 3, 1."""
    assert int8_kernel.available()  # loads the op
    torch.manual_seed(0)
    layout, _ = expert_layout("int8_row", hidden, inter)
    weights = [(torch.randn(inter, hidden), torch.randn(inter, hidden), torch.randn(hidden, inter))
               for _ in range(6)]  # fmt: skip
    rows = torch.stack([pack_expert("int8_row", g, u, d) for g, u, d in weights])
    views = stacked_views(rows, layout)
    gq, gs = views["gate_up.q"], views["gate_up.scale"]
    assert gq.stride(0) > gq[0].numel()  # strided: other parts of the row lie between
    gq[1, :3] = -128  # a code the converter never writes, still read exactly
    gq[1, 3:5] = 127
    idx = torch.tensor([5, 0, 3, 1])
    x = torch.randn(4, hidden)
    x[:, :3] = -torch.rand(4, 3) * 5  # negative activations against the -128 codes
    x[0, 7] = 40.0  # an outlier channel
    one = int8_kernel.matvec(x[:1], gq, gs, idx)  # one row for all
    per = int8_kernel.matvec(x, gq, gs, idx)  # one row each
    for k, e in enumerate(idx.tolist()):
        for y, row in ((one[k], x[0]), (per[k], x[k])):
            ref = rounded_reference(row, gq[e], gs[e])
            assert (y.double() - ref).abs().max() <= 1e-5 * ref.abs().max()
            exact = (gq[e].float() * gs[e][:, None]) @ row  # float32 dequantize-then-matmul
            # the 8-bit activation: measured 0.5-1.3%, 2.1% with the 40x outlier in a block
            assert rel_err(y, exact) < 3e-2
    a = torch.randn(4, inter)
    down = int8_kernel.matvec(a, views["down.q"], views["down.scale"], idx)
    for k, e in enumerate(idx.tolist()):
        ref = rounded_reference(a[k], views["down.q"][e], views["down.scale"][e])
        assert (down[k].double() - ref).abs().max() <= 1e-5 * ref.abs().max()


@needs_vnni
def test_an_output_row_is_the_same_bits_alone_or_with_others():
    assert int8_kernel.available()
    torch.manual_seed(2)
    q, s = quantize_int8_rows(torch.randn(6 * 300, 512))
    q, s = q.view(6, 300, 512), s.view(6, 300)
    x = torch.randn(1, 512)
    idx = torch.tensor([4, 2, 5])
    together = int8_kernel.matvec(x, q, s, idx)
    for k, e in enumerate(idx.tolist()):
        alone = int8_kernel.matvec(x, q[e : e + 1], s[e : e + 1], ZERO)[0]
        assert torch.equal(together[k], alone)
    assert torch.equal(int8_kernel.matvec(x.repeat(3, 1), q, s, idx), together)  # A = K
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiles split over other threads: the same bits
    try:
        assert torch.equal(int8_kernel.matvec(x, q, s, idx), together)
    finally:
        torch.set_num_threads(threads)


@needs_vnni
def test_one_bf16_row_runs_the_kernel_without_a_packed_copy():
    torch.manual_seed(1)
    w, x = torch.randn(200, 512), torch.randn(1, 512)
    linear = Int8Linear(*quantize_int8_rows(w))
    assert linear.prepare_kernel() and linear._packed is None  # nothing copied
    ref = x @ (linear.weight.float() * linear.scale[:, None]).t()
    y = linear(x.bfloat16())
    assert y.dtype == torch.bfloat16 and y.shape == (1, 200)
    assert torch.equal(y, int8_kernel.matvec(x.bfloat16(), linear.weight[None],
                                             linear.scale[None], ZERO).bfloat16())  # fmt: skip
    assert rel_err(y.float(), ref) < 2e-2
    # several rows (prefill) still go through torch's weight-only kernel, and agree
    assert rel_err(linear(x.repeat(3, 1).bfloat16()).float()[1], ref[0]) < 2e-2


def _fallback_run(env_extra: dict) -> list[str]:
    code = (
        "import warnings, torch\n"
        "from engine.torch.layers import Int8Linear\n"
        "from converters.formats.torch_quant import quantize_int8_rows\n"
        "torch.manual_seed(0)\n"
        "w, x = torch.randn(64, 256), torch.randn(1, 256)\n"
        "lin = Int8Linear(*quantize_int8_rows(w))\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    prepared = lin.prepare_kernel()\n"
        "    y = lin(x.bfloat16()).float()\n"
        "ref = x @ (lin.weight.float() * lin.scale[:, None]).t()\n"
        "print(lin.decode_kernel_applies(), prepared and lin._packed is not None,\n"
        "      any('int8 decode kernel' in str(c.message) for c in caught),\n"
        "      float((y - ref).norm() / ref.norm()))\n"
    )
    return printed_in_fresh_python(code, env_extra)


def test_without_a_compiler_the_engine_warns_and_runs_fbgemm(tmp_path):
    applies, fbgemm, warned, err = _fallback_run(no_compiler(tmp_path))
    assert applies == "False" and fbgemm == "True" and float(err) < 2e-2
    assert warned == "True" or not VNNI


def test_the_switch_turns_it_off_without_a_warning(tmp_path):
    applies, fbgemm, warned, err = _fallback_run({"ITAMAE_INT8_KERNEL": "0"})
    assert (applies, fbgemm, warned) == ("False", "True", "False") and float(err) < 2e-2


@pytest.fixture(scope="module")
def int8_model(hf_checkpoint, tmp_path_factory):
    folder = hf_checkpoint("qwen2_moe")  # shared expert + gate, 8 experts top-4
    return convert_to_torch(folder, tmp_path_factory.mktemp("int8k") / "int8", "int8")


@needs_vnni
def test_the_engine_runs_it_where_bf16_decode_reads_int8(int8_model):
    model = load_model(int8_model, torch.bfloat16, compile=True)
    assert model.fused.kernel == "int8_vnni"
    step = model.step
    assert step._head[0] == "int8_vnni"
    layer_consts = dict(_layer_params(step, 0, model.layers[0])[0])
    assert layer_consts["qkv"] == "int8_vnni"  # q, k and v as one product
    assert layer_consts["o"] == "int8_vnni" and layer_consts["experts"][0] == "int8_vnni"
    assert model.layers[0].attn.o._packed is None and step.qkv[0]._packed is None  # no copies
    f32 = load_model(int8_model, torch.float32, compile=True)
    assert f32.fused.kernel == "int8_row" and f32.step._head[0] == "int8"  # exact in float32


@needs_vnni
def test_grouped_and_per_expert_int8_decode_agree(int8_model, monkeypatch):
    """bf16: decode's K experts in two kernel calls against one Int8Linear call per expert
    and projection (the same kernel, rounding to bf16 between the projections)."""
    monkeypatch.setenv("ITAMAE_COMPILE_STEP", "0")
    assert_grouped_agrees_with_per_expert(int8_model, lambda f: f.kernel == "int8_vnni")


@needs_vnni
def test_an_int8_experts_rows_are_the_same_bits_from_a_slot_and_from_the_file(int8_model):
    assert_expert_rows_same_from_slot_and_file(int8_model)
