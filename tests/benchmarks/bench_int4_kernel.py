"""int4 decode kernels side by side: one token through a layer's chosen experts, and the head.

Not a test (it prints figures); run it by hand:

    python -m tests.benchmarks.bench_int4_kernel [--threads 2] [--rounds 8] [--only head]

Bench-model shapes (tests/benchmarks/bench_convert.py): hidden 1024, expert FFN 768, top-4
of 32 int4 experts (groups of 64, float16 scale and zero, as the torch format stores them),
and Qwen's 151,936 x 1024 output layer. Candidates, in one process, rounds interleaved in
rotating order, best round kept, wall and CPU time (process_time: all threads) per call:
- experts: torch's `_weight_int4pack_mm_for_cpu` per expert and projection (the engine's
  kernel before int4_kernel.py), an Inductor-generated gather + dequantize + dot over the
  stacked experts (compiled.py's way for int8; float32 scales, as Inductor converts a
  float16 scalar in software), and int4_kernel.py's VNNI kernel: two matvec calls for all
  K with the activation between them in Python, and the experts op (both and the
  activation in one operator, as the compiled decode step calls it);
- the head: `_weight_int4pack_mm_for_cpu`, the VNNI kernel, and FBGEMM's int8 matvec on
  the int8 head the torch format stored before (the int4 recipe's old output layer).
GB/s counts the bytes each reads (codes and scales) per call.
"""

from __future__ import annotations

import os

os.environ.setdefault("GOMP_SPINCOUNT", "10000")  # as app/cli.py, before torch loads

import argparse  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from converters.formats.torch_quant import quantize_int4_groups, quantize_int8_rows  # noqa: E402
from engine.torch import int4_kernel  # noqa: E402
from engine.torch.compiled import setup_inductor  # noqa: E402
from engine.torch.cpu_kernels import int8_matvec, pack_int8  # noqa: E402
from engine.torch.layers import Int4Linear  # noqa: E402
from tests.benchmarks.kernel_rounds import report  # noqa: E402

HIDDEN, INTER, EXPERTS, TOP_K, VOCAB, GROUP = 1024, 768, 32, 4, 151_936, 64


def stacked(n: int, rows: int, cols: int):
    q, s, z = quantize_int4_groups(torch.randn(n * rows, cols) * 0.02, GROUP)
    return q.view(n, rows, -1), s.view(n, rows, -1), z.view(n, rows, -1)


def int4pack(q, s, z) -> list[Int4Linear]:
    linears = [Int4Linear(q[e], s[e], z[e], GROUP) for e in range(q.shape[0])]
    for lin in linears:
        lin.prepare_kernel()
    return linears


def pack_mm(lin: Int4Linear, x: torch.Tensor) -> torch.Tensor:
    packed, sz = lin._kernel
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, GROUP, sz)


def inductor_rows(q, s, z, idx, x):
    """[K, R] from stacked int4 q [N, R, C/2], float32 s/z [N, R, C/64], x [K or 1, C]:
    per group, sum (code - 8) * x, then scale it and add zero x sum(x)."""
    w = q[idx]
    k, r, _ = w.shape
    codes = torch.stack([w & 15, w >> 4], dim=-1).view(k, r, -1, GROUP).float() - 8
    xg = x.view(x.shape[0], 1, -1, GROUP)
    dots = (codes * xg).sum(-1)  # [K, R, G]
    return (dots * s[idx] + z[idx] * xg.sum(-1)).sum(-1)


def inductor_experts(x, gq, gs, gz, dq, ds, dz, idx):
    gate, up = inductor_rows(gq, gs, gz, idx, x[None]).chunk(2, dim=-1)
    return inductor_rows(dq, ds, dz, idx, F.silu(gate) * up)


def cases(x: torch.Tensor):
    gate_up, down = stacked(EXPERTS, 2 * INTER, HIDDEN), stacked(EXPERTS, HIDDEN, INTER)
    gu_lin, dn_lin = int4pack(*gate_up), int4pack(*down)
    xb = x.bfloat16()[None]

    def per_expert(idx):
        out = []
        for e in idx.tolist():
            gate, up = pack_mm(gu_lin[e], xb).chunk(2, dim=-1)
            out.append(pack_mm(dn_lin[e], F.silu(gate) * up))
        return torch.cat(out)

    def vnni(idx):
        gate, up = int4_kernel.matvec(x[None], *gate_up, idx).chunk(2, dim=-1)
        return int4_kernel.matvec(F.silu(gate) * up, *down, idx)

    def vnni_op(idx):
        return int4_kernel.experts(x[None], *gate_up, *down, idx, "silu")

    setup_inductor()
    compiled = torch.compile(inductor_experts, dynamic=False)
    f32 = [(q, s.float(), z.float()) for q, s, z in (gate_up, down)]

    def inductor(idx):
        return compiled(x, *f32[0], *f32[1], idx)

    head = stacked(1, VOCAB, HIDDEN)
    head_lin = int4pack(*head)[0]
    q8, s8 = quantize_int8_rows(torch.randn(VOCAB, HIDDEN) * 0.02)
    packed8 = pack_int8(q8, s8)
    zero = torch.zeros(1, dtype=torch.long)

    def expert_bytes(scale_bytes: int) -> int:  # codes + scale and zero, K experts
        return TOP_K * sum(
            q[0].numel() + s[0].numel() * 2 * scale_bytes for q, s, _ in (gate_up, down)
        )

    head_bytes = head[0].numel() + head[1].numel() * 4
    pick = lambda: torch.randperm(EXPERTS)[:TOP_K]  # noqa: E731
    return {
        "experts: _weight_int4pack_mm_for_cpu per expert": (lambda: per_expert(pick()), expert_bytes(2)),
        "experts: Inductor gather+dequant+dot (f32 scales)": (lambda: inductor(pick()), expert_bytes(4)),
        "experts: VNNI kernel, 2 calls for K": (lambda: vnni(pick()), expert_bytes(2)),
        "experts: VNNI experts op, 1 call for K": (lambda: vnni_op(pick()), expert_bytes(2)),
        "head: _weight_int4pack_mm_for_cpu": (lambda: pack_mm(head_lin, xb), head_bytes),
        "head: VNNI kernel": (lambda: int4_kernel.matvec(x[None], *head, zero), head_bytes),
        "head: int8 FBGEMM (the old int8 head)": (lambda: int8_matvec(xb, packed8), VOCAB * (HIDDEN + 4)),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--only", choices=["experts", "head"], help="one of the two comparisons")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not int4_kernel.available():
        print("the VNNI kernel is not available here: nothing to compare")
        return 1
    torch.manual_seed(0)
    table = cases(torch.randn(HIDDEN))
    names = [n for n in table if args.only is None or n.startswith(args.only)]
    calls = {n: 50 if n.startswith("experts") else 5 for n in names}
    report(table, calls, args.rounds, args.threads, "torch int4pack", 52)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
