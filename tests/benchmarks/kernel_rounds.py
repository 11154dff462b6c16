"""The kernel benchmarks' measurement (bench_int4_kernel.py, bench_int8_kernel.py): every
candidate in one process, rounds in rotating order so that none always runs first, the best
round's wall and CPU time per call kept, and each printed against its group's first entry."""

from __future__ import annotations

import os
import time


def best_of_rounds(table: dict, calls: dict, rounds: int) -> dict[str, tuple[float, float]]:
    """table: name -> (fn, bytes read); calls: name -> calls per round
    -> name -> (best wall s, best CPU s) per call."""
    names = list(calls)
    best = {n: (float("inf"), float("inf")) for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = table[name][0]
            fn()  # warm (and, for Inductor, compile)
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(calls[name]):
                fn()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            b = best[name]
            best[name] = (min(b[0], wall / calls[name]), min(b[1], cpu / calls[name]))
    return best


def report(table: dict, calls: dict, rounds: int, threads: int, peer: str, width: int) -> None:
    """Measure (best_of_rounds) and print each candidate against the first of its group
    (the part of its name before ':', e.g. "head"), which is `peer`."""
    load = os.getloadavg()
    best = best_of_rounds(table, calls, rounds)
    print(f"threads {threads}, load average {load[0]:.1f} before / "
          f"{os.getloadavg()[0]:.1f} after, best of {rounds} rounds")  # fmt: skip
    names = list(calls)
    for name in names:
        base = best[next(n for n in names if n.split(":")[0] == name.split(":")[0])]
        wall, cpu = best[name]
        print(f"{name:{width}s} wall {wall * 1e3:7.3f} ms  cpu {cpu * 1e3:7.3f} ms  "
              f"{table[name][1] / wall / 1e9:5.1f} GB/s  vs {peer}: wall "
              f"{base[0] / wall:4.2f}x cpu {base[1] / cpu:4.2f}x")  # fmt: skip
