"""`itamae bench`'s peak-RSS figure is the measured process's own, not its parent's.

bench_engines runs every measurement in a child process after converting the models in its
own; Linux carries ru_maxrss across exec, so a child that read it reported the parent's
peak. The child here starts from a parent holding 256 MiB more than the child ever uses.
"""

from __future__ import annotations

import subprocess
import sys

PARENT_EXTRA = 256 * 2**20


def test_a_child_reports_its_own_peak_not_its_parents():
    held = bytearray(PARENT_EXTRA)
    held[::4096] = b"\1" * len(held[::4096])  # every page touched: resident
    code = "from app.commands.bench import peak_rss_bytes; print(peak_rss_bytes())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    child_peak = int(out.stdout)
    assert 0 < child_peak < PARENT_EXTRA / 2, child_peak  # a bare interpreter: ~10-30 MiB
    del held
