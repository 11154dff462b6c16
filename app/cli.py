"""`itamae`: one entry point. Each subcommand lives in app/commands/<name>.py with
`add_parser(subparsers)` and `run(args) -> int`; this file only wires them together.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

# Before torch is imported anywhere: how long OpenMP threads spin before they sleep. A
# decode step runs hundreds of small parallel ops back to back; threads that sleep at once
# (OMP_WAIT_POLICY=PASSIVE) pay a wake-up on each (a 4-head attention step: 0.35 ms instead
# of 0.05 ms on 2 threads), while libgomp's default spin (300,000 rounds) lets waiting
# threads steal the core on a busy small machine (an expert matvec went from 0.1 ms to
# 4.2 ms). 10,000 rounds bridges the gaps between ops of one step and no more.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from app import __version__
from converters.core.errors import ItamaeError

# Subcommands in the order `itamae --help` lists them. A module that is missing (a
# feature not built yet) is left out rather than breaking the others.
COMMANDS = (
    "serve",
    "chat",
    "models",
    "pull",
    "convert",
    "inspect",
    "generate",
    "bench",
    "eval",
    "shortcut",
)


def _command_modules():
    modules = {}
    for name in COMMANDS:
        try:
            modules[name] = importlib.import_module(f"app.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"app.commands.{name}":
                raise
    return modules


def build_parser(modules) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="itamae",
        description="Chat with open Mixture-of-Experts models on this machine, offline.",
    )
    parser.add_argument("--version", action="version", version=f"itamae {__version__}")
    parser.add_argument("--model", help="model to load at start: a folder, a .gguf, or 'demo'")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--no-browser", action="store_true", help="do not open the browser")
    parser.add_argument("--api-key", help="bearer token the API requires (needed off loopback)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in modules.values():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    modules = _command_modules()
    args = build_parser(modules).parse_args(argv)
    try:
        if args.command is None:
            from app import launcher

            return launcher.run(args)
        return modules[args.command].run(args)
    except ItamaeError as e:
        if getattr(args, "json", False):
            print(json.dumps({"error": str(e)}))
        print(f"itamae: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("itamae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
