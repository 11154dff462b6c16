"""int8 decode kernels side by side: one token through the head, a layer's fused qkv and o
projections, and a layer's chosen experts.

Not a test (it prints figures); run it by hand:

    python -m tests.benchmarks.bench_int8_kernel [--threads 2] [--rounds 8] [--only head]

Bench-model shapes (tests/benchmarks/bench_convert.py): hidden 1024, 16 query and 4 KV heads
of 64 (fused qkv 1536 x 1024, o 1024 x 1024), top-4 of 32 experts with FFN 768, Qwen's
151,936 x 1024 output layer; int8 with one float32 scale per row, as the torch format
stores them. Candidates, in one process, rounds interleaved in rotating order, best round
kept, wall and CPU time (process_time: all threads) per call:
- FBGEMM's `quantized::linear_dynamic` on its packed copy (the engine's decode kernel before
  int8_kernel.py; per expert for the experts, with every expert packed up front);
- torch's weight-only `_weight_int8pack_mm` (bf16 activation; per expert for the experts);
- Inductor's gather + convert + dot over the stacked experts (compiled.py's routed_int8),
  and the same generated reduction for one matrix (compiled_step.py's note: 0.5-0.6x FBGEMM);
- int8_kernel.py's VNNI kernel (the experts: two calls for all K).
GB/s counts the bytes each reads (int8 codes and float32 scales) per call. Then the accuracy
of the activation's rounding: relative error against float32 dequantize-then-matmul on the
head, per block of 64 (the kernel) and per row (a torch simulation of one scale per row),
with FBGEMM's (one affine uint8 scale per row) beside them.
"""

from __future__ import annotations

import os

os.environ.setdefault("GOMP_SPINCOUNT", "10000")  # as app/cli.py, before torch loads

import argparse  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from converters.formats.torch_quant import quantize_int8_rows  # noqa: E402
from engine.torch import int8_kernel  # noqa: E402
from engine.torch.compiled import _matvec_rows, routed_int8, setup_inductor  # noqa: E402
from engine.torch.cpu_kernels import int8_matvec, pack_int8  # noqa: E402
from tests.benchmarks.kernel_rounds import report  # noqa: E402

HIDDEN, INTER, EXPERTS, TOP_K, VOCAB = 1024, 768, 32, 4, 151_936
QKV, O_IN = 1536, 1024


def stacked(n: int, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    q, s = quantize_int8_rows(torch.randn(n * rows, cols) * 0.02)
    return q.view(n, rows, cols), s.view(n, rows)


def matrix_cases(name: str, q: torch.Tensor, s: torch.Tensor, x: torch.Tensor) -> dict:
    """One [R, C] matrix (q [1, R, C]) four ways."""
    packed = pack_int8(q[0], s[0])
    xb, sb = x.bfloat16()[None], s[0].bfloat16()
    zero = torch.zeros(1, dtype=torch.long)
    inductor = torch.compile(lambda w, sc, v: _matvec_rows(w, v[None]) * sc, dynamic=False)
    nbytes = q.numel() + s.numel() * 4
    return {
        f"{name}: FBGEMM linear_dynamic (packed copy)": (lambda: int8_matvec(x[None], packed), nbytes),
        f"{name}: _weight_int8pack_mm (bf16)": (lambda: torch._weight_int8pack_mm(xb, q[0], sb), nbytes),
        f"{name}: Inductor reduction": (lambda: inductor(q, s, x), nbytes),
        f"{name}: VNNI kernel": (lambda: int8_kernel.matvec(x[None], q, s, zero), nbytes),
    }  # fmt: skip


def expert_cases(x: torch.Tensor) -> dict:
    (gq, gs), (dq, ds) = stacked(EXPERTS, 2 * INTER, HIDDEN), stacked(EXPERTS, HIDDEN, INTER)
    packed = [(pack_int8(gq[e], gs[e]), pack_int8(dq[e], ds[e])) for e in range(EXPERTS)]
    gsb, dsb = gs.bfloat16(), ds.bfloat16()
    xb = x.bfloat16()[None]

    def fbgemm(idx):
        out = []
        for e in idx.tolist():
            gate, up = int8_matvec(x[None], packed[e][0]).chunk(2, dim=-1)
            out.append(int8_matvec(F.silu(gate) * up, packed[e][1]))
        return torch.cat(out)

    def int8pack(idx):
        out = []
        for e in idx.tolist():
            gate, up = torch._weight_int8pack_mm(xb, gq[e], gsb[e]).chunk(2, dim=-1)
            out.append(torch._weight_int8pack_mm(F.silu(gate) * up, dq[e], dsb[e]))
        return torch.cat(out)

    inductor = torch.compile(lambda *a: routed_int8(*a, F.silu), dynamic=False)

    def vnni(idx):
        gate, up = int8_kernel.matvec(x[None], gq, gs, idx).chunk(2, dim=-1)
        return int8_kernel.matvec(F.silu(gate) * up, dq, ds, idx)

    nbytes = TOP_K * (gq[0].numel() + dq[0].numel() + 4 * (gs.shape[1] + ds.shape[1]))
    pick = lambda: torch.randperm(EXPERTS)[:TOP_K]  # noqa: E731
    return {
        "experts: FBGEMM per expert (packed copies)": (lambda: fbgemm(pick()), nbytes),
        "experts: _weight_int8pack_mm per expert": (lambda: int8pack(pick()), nbytes),
        "experts: Inductor gather+convert+dot": (lambda: inductor(x, gq, gs, dq, ds, pick()), nbytes),
        "experts: VNNI kernel, 2 calls for K": (lambda: vnni(pick()), nbytes),
    }  # fmt: skip


def rounding_errors(q: torch.Tensor, s: torch.Tensor) -> dict[str, float]:
    """Relative error of the head's logits against float32 dequantize-then-matmul, for an
    activation row with a few outlier channels (as LLM hidden states have)."""
    torch.manual_seed(1)
    x = torch.randn(HIDDEN)
    x[torch.randperm(HIDDEN)[:8]] *= 20
    exact = (q[0].float() @ x) * s[0]

    def rel(y):
        return float((y - exact).norm() / exact.norm())

    per_row = torch.round(x * (127 / x.abs().max())) * (x.abs().max() / 127)
    zero = torch.zeros(1, dtype=torch.long)
    return {
        "VNNI kernel, per block of 64": rel(int8_kernel.matvec(x[None], q, s, zero)[0]),
        "one scale per row (simulated)": rel((q[0].float() @ per_row) * s[0]),
        "FBGEMM (affine uint8 per row)": rel(int8_matvec(x[None], pack_int8(q[0], s[0]))[0]),
        "bf16 activation (_weight_int8pack_mm)": rel(
            torch._weight_int8pack_mm(x.bfloat16()[None], q[0], s[0].bfloat16())[0].float()
        ),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--only", choices=["head", "qkv", "o", "experts"], help="one comparison")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not int8_kernel.available():
        print("the VNNI kernel is not available here: nothing to compare")
        return 1
    setup_inductor()
    torch.manual_seed(0)
    x = torch.randn(HIDDEN)
    head = stacked(1, VOCAB, HIDDEN)
    table = {
        **matrix_cases("head", *head, x),
        **matrix_cases("qkv", *stacked(1, QKV, HIDDEN), x),
        **matrix_cases("o", *stacked(1, HIDDEN, O_IN), torch.randn(O_IN)),
        **expert_cases(x),
    }
    names = [n for n in table if args.only is None or n.split(":")[0] == args.only]
    calls = {n: 5 if n.startswith("head") else 50 for n in names}
    report(table, calls, args.rounds, args.threads, "FBGEMM", 46)
    if args.only in (None, "head"):
        print("rounding the activation, head logits' relative error vs float32:")
        for name, err in rounding_errors(*head).items():
            print(f"  {name:40s} {err:.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
