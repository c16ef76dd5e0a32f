"""``vdit-accel`` command line: ``generate | search | vbench | demo``.

Each subcommand lives in its own module exposing ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; they
are imported only when the command line is parsed, and heavy dependencies (DEAP, Gradio) only when a command runs.
Run under ``torchrun`` as ``python -m vdit_accel.cli ...``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "generate": "vdit_accel.commands.generate",
    "search": "vdit_accel.commands.search",
    "vbench": "vdit_accel.commands.vbench",
    "demo": "vdit_accel.commands.demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vdit-accel", description="Accelerate video diffusion transformers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and module_name.startswith(e.name):  # command not built yet in this version
                continue
            raise
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"vdit-accel {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
