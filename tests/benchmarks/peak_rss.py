"""Run a Python module or script in this process and report its own peak RSS.

    python -m tests.benchmarks.peak_rss REPORT.json (-m MODULE | SCRIPT) [ARGS...]

The peak is VmHWM from /proc/self/status, which belongs to the address space exec()
created, so unlike a child's ru_maxrss it does not include the parent's memory at fork.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

from app.commands.bench import peak_rss_bytes


def main() -> None:
    report, target, *rest = sys.argv[1:]
    code = 0
    try:
        if target == "-m":
            module, *args = rest
            sys.argv = [module, *args]
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            sys.argv = [target, *rest]
            sys.path.insert(0, str(Path(target).parent))
            runpy.run_path(target, run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    Path(report).write_text(json.dumps({"peak_rss_bytes": peak_rss_bytes(), "exit_code": code}))
    sys.exit(code)


if __name__ == "__main__":
    main()
