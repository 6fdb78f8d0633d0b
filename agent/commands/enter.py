"""`massgate enter`: a quantity no meter reads (a weighbridge ticket, a dip, a lab result, an
MES issue or receipt) into the running agent, through its command socket."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from .. import config as config_module
from ..core import units
from ..core.yamlsource import ConfigError
from .common import EXIT_BAD_CONFIG, EXIT_FAILED, EXIT_OK, login_name, print_config_error


def setup(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Enter a quantity into the running agent. A manual stream's entry lands in the "
        "balance window of its --time, whenever it is entered: a closed calendar or batch "
        "window it falls in is judged again and published as a correction (revision n). "
        "For a metered stream with compare_entries: true, the entry is held against what "
        "its meter measured from --from to --to (the same delivery), with the difference "
        "and its significance. --inventory with --count enters a stocktake of work in progress "
        "(an inventory with count: entry): it stands from now until the next. "
        "Every entry is a record of its own, kept and published; none "
        "reaches a device. Exit status 0 when the agent took it, 1 when it refused it or is "
        "not running, 2 for bad input."
    )
    p.add_argument("config", metavar="CONFIG", help="the agent's YAML configuration file")
    p.add_argument("--stream", help="a manual stream, or a compared one")
    p.add_argument("--quantity", help='with its unit, like "12.34 t"')
    p.add_argument(
        "--inventory",
        help="a stocktake instead: the inventory (count: entry) whose units were counted",
    )
    p.add_argument("--count", type=int, help="a stocktake: the units counted, from now on")
    p.add_argument(
        "--time", help="when it happened: ISO 8601, UTC unless it says (default: now, or --to)"
    )
    p.add_argument("--from", dest="start", help="a compared entry: the delivery's start")
    p.add_argument("--to", dest="end", help="a compared entry: the delivery's end")
    p.add_argument(
        "--uncertainty",
        help='its ± at 95 %%, like "20 kg" (default: the stream\'s accuracy times the quantity)',
    )
    p.add_argument("--ticket", help="the ticket or document number; one entry per ticket")
    p.add_argument("--by", help="who enters it (default: the login name)")
    p.add_argument("--json", action="store_true", help="print the entry the agent recorded")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..balance.windows import check_label  # noqa: PLC0415
    from .report import parse_time  # noqa: PLC0415

    def fail(message: str) -> int:
        print(f"massgate enter: error: {message}", file=sys.stderr)
        return EXIT_BAD_CONFIG

    try:
        config = config_module.load(Path(args.config))
    except ConfigError as exc:
        print_config_error(exc)
        return EXIT_BAD_CONFIG
    if (args.stream is None) == (args.inventory is None):
        return fail("give --stream (with --quantity) or --inventory (with --count)")
    if args.inventory is not None:
        return _stocktake(args, config, fail)
    if args.quantity is None or args.count is not None:
        return fail("a stream's entry is a --quantity with its unit (--count is a stocktake's)")
    manual = {m.name for m in config.manual_streams}
    compared = {s.name for s in config.streams if s.compare_entries}
    if args.stream not in manual | compared:
        listed = ", ".join(sorted(manual | compared)) or "none are configured"
        return fail(f"no manual or compared stream named '{args.stream}' ({listed})")
    now = time.time()
    request: dict[str, Any] = {"command": "enter", "stream": args.stream}
    try:
        request["kg"] = units.parse_quantity(args.quantity, units.MASS)
        if args.uncertainty is not None:
            request["uncertainty_kg"] = units.parse_quantity(args.uncertainty, units.MASS)
        if args.stream in compared:
            if args.start is None or args.end is None:
                return fail(
                    f"{args.stream} is metered: give the delivery's --from and --to, to hold "
                    "the entry against what the meter measured"
                )
            request["from"] = parse_time(args.start, now=now)
            request["to"] = parse_time(args.end, now=now)
        elif args.start is not None or args.end is not None:
            return fail(f"{args.stream} is a manual stream: --from and --to are for a meter's")
        default = request.get("to", now)
        request["time"] = parse_time(args.time, now=now) if args.time else default
        request["by"] = check_label(args.by if args.by is not None else login_name(), "--by")
        if args.ticket is not None:
            request["ticket"] = check_label(args.ticket, "--ticket")
    except (units.UnitError, ValueError, OverflowError) as exc:
        return fail(str(exc))
    if not all(math.isfinite(v) for v in request.values() if isinstance(v, float)):
        return fail("a quantity or time is not a finite number")
    return _send(args, config, request)


def _stocktake(args: argparse.Namespace, config: Any, fail: Any) -> int:
    from ..balance.windows import check_label  # noqa: PLC0415
    from ..config.model import ENTERED  # noqa: PLC0415

    counted = [v.name for v in config.inventories if v.count == ENTERED]
    if args.inventory not in counted:
        listed = ", ".join(counted) or "none are configured"
        return int(fail(f"no inventory counted by entry named '{args.inventory}' ({listed})"))
    if args.count is None or args.count < 0:
        return int(fail("a stocktake gives --count, the units counted (0 or more)"))
    if args.quantity is not None or args.start is not None or args.time is not None:
        return int(fail("a stocktake is a --count from now on: no --quantity, --time or --from"))
    request: dict[str, Any] = {"command": "enter", "inventory": args.inventory, "count": args.count}
    try:
        request["by"] = check_label(args.by if args.by is not None else login_name(), "--by")
        if args.ticket is not None:
            request["ticket"] = check_label(args.ticket, "--ticket")
    except ValueError as exc:
        return int(fail(str(exc)))
    return _send(args, config, request)


def _send(args: argparse.Namespace, config: Any, request: dict[str, Any]) -> int:
    from ..runtime.commandserver import command_socket, send  # noqa: PLC0415
    from ..runtime.statusserver import StatusUnavailable  # noqa: PLC0415

    try:
        answer = send(command_socket(config.health.socket), request)
    except StatusUnavailable as exc:
        print(f"massgate enter: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if answer.get("ok") is not True:
        print(f"massgate enter: refused: {answer.get('error', 'no reason given')}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        json.dump(answer.get("entry"), sys.stdout, indent=1)
        print()
    else:
        print(answer.get("message", "entered"))
    if answer.get("warning"):  # taken, but not (yet) on the disk
        print(f"massgate enter: warning: {answer['warning']}", file=sys.stderr)
    return EXIT_OK
