"""``sparsecnn`` command line: one subcommand per module of :mod:`sparsecnn.cli`.

Each subcommand module defines ``add_parser(subparsers)``, which adds its parser and sets
``func(args) -> int`` as the default. Errors a user can fix (bad files, bad values) are raised as
:class:`sparsecnn.cli.main.UsageError`, ValueError or TypeError and printed as one line, exit code 2.
Ctrl-C prints one line and exits with 130; nothing partial is left (every output is written to
a temporary name and renamed when complete).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order ``sparsecnn --help`` lists them.
COMMANDS: tuple[str, ...] = ("optimize", "bench", "bench_spatial", "report")


class UsageError(Exception):
    """An error caused by the user's input: printed without a traceback, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparsecnn",
        description="Make pruned CNNs run faster: sparse kernels, per-layer dispatch, reports.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"sparsecnn.cli.{name}").add_parser(sub)
    return parser


#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UsageError, ValueError, TypeError, FileNotFoundError) as exc:
        msg = " ".join(str(exc).split())          # one line, whatever the library wrote
        print(f"sparsecnn {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # every file is written atomically (sparsecnn._atomic): an interrupted run leaves none
        print(f"sparsecnn {args.command}: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
