"""massgate: the one entry point. The commands are in COMMANDS (agent/commands/__init__.py)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import COMMANDS, argtypes
from .common import EXIT_FAILED

DESCRIPTION = (
    "Edge gateway for mass balance: reads meters over Modbus, totalizes kilograms, "
    "checks that mass is conserved, and publishes every result over MQTT/TLS."
)


def _chosen(argv: list[str]) -> str | None:
    """The command named on the line: the first word that is not an option (-v is the only one)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the arguments of `command` only (None: of every command).

    A command's module is imported only to add its arguments, so a parser for `run` imports
    nothing of the simulator or the benchmarks.
    """
    parser = argtypes.Parser(prog="massgate", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    # Sub-parsers are of the parser's own class (one-line errors); typed as the base class
    # that the command modules take.
    sub: argparse._SubParsersAction[argparse.ArgumentParser] = parser.add_subparsers(  # type: ignore[assignment]
        dest="command", required=True, metavar="COMMAND"
    )
    for name, entry in COMMANDS.items():
        p = sub.add_parser(name, help=entry.help, description=entry.help)
        if command is None or command == name:
            module, function = entry.target.split(":")
            getattr(importlib.import_module(f"{__package__}.{module}"), function)(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = _chosen(argv)
    parser = build_parser(chosen if chosen in COMMANDS else "")
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        sys.stdout.flush()
    except (BrokenPipeError, BaseExceptionGroup) as exc:
        # The reader went away (`massgate demo --plain | head`): what it did not read is not
        # an error of ours. From inside the agent's task group it comes wrapped in a group.
        if isinstance(exc, BaseExceptionGroup) and exc.split(BrokenPipeError)[1] is not None:
            raise
        # Python would complain again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    return result


if __name__ == "__main__":
    sys.exit(main())
