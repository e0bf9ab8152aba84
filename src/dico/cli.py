"""The `dico` command: each subcommand is a thin shell over a library function.

Every concern registers its own subcommands through a `register(subparsers)` function in its `cli` module.
"""

import argparse
import importlib
import sys

from .cpu_allocator import tune_glibc_malloc

COMMAND_MODULES = [
    "dico.benchmarking.cli",
    "dico.checkpoints",
    "dico.training.cli",
    "dico.sampling.cli",
    "dico.evaluation.cli",
    "dico.data.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dico", description="DiCo: train, sample, evaluate and benchmark.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "tune_malloc", True):  # our process: keep freed CPU memory for reuse (dico.cpu_allocator)
        tune_glibc_malloc()
    from .training import TrainingInterrupted

    try:
        return args.func(args) or 0
    except TrainingInterrupted as stop:  # a consistent checkpoint is saved: a message, not a traceback
        print(f"dico {args.command}: {stop}", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        print(f"dico {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, KeyError, RuntimeError, OSError, ArithmeticError) as err:
        if getattr(args, "debug", False):
            raise
        print(f"dico {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
