"""`massgate report`: the balances and alarms the gateway kept, per node and window.

Reads the archive in the state database read-only, so it can run beside the agent (SQLite
WAL lets a reader in while the agent writes).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from ..balance.yields import BY, Grouping, latest, summarize
from ..config import CALENDAR, OUTPUT_CLASSES, PRODUCT
from ..core import units
from ..core.records import parse_utc
from ..core.yamlsource import ConfigError

EXIT_OK = 0
EXIT_NOTHING = 1
EXIT_BAD_INPUT = 2


def parse_time(value: str, *, now: float) -> float:
    """An ISO 8601 time (UTC unless it says otherwise), or a duration ago like '24h'."""
    text = value.strip()
    if re.fullmatch(r"[0-9.]+\s*[a-zA-Z]+", text):
        try:
            return now - units.parse_quantity(text, units.TIME)
        except units.UnitError:
            pass
    try:
        return parse_utc(text)
    except ValueError:
        raise ValueError(
            f"'{value}' is neither a time like 2026-11-23T06:00 nor a duration ago like 24h"
        ) from None


def read(
    path: Path, kinds: tuple[str, ...], since: float, until: float
) -> dict[str, list[dict[str, Any]]]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no state database (has the agent run?)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise FileNotFoundError(f"{path}: cannot open the state database ({exc})") from None
    try:
        found: dict[str, list[dict[str, Any]]] = {}
        for kind in kinds:
            rows = conn.execute(
                "SELECT payload FROM archive WHERE kind = ? AND created >= ? AND created < ? "
                "ORDER BY seq",
                (kind, since, until),
            )
            found[kind] = [json.loads(payload) for (payload,) in rows]
        return found
    except sqlite3.OperationalError as exc:
        raise FileNotFoundError(f"{path}: not a massgate state database ({exc})") from None
    except sqlite3.DatabaseError as exc:
        raise FileNotFoundError(
            f"{path}: the state database is damaged ({exc}); the agent moves it aside and "
            "starts a new one when it meets the damage"
        ) from None
    finally:
        conn.close()


def _f(value: Any, width: int, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—".rjust(width)
    return f"{value:{width}.{digits}f}"


def table(balances: list[dict[str, Any]], alarms: list[dict[str, Any]]) -> str:
    lines = []
    nodes = sorted({b["node"] for b in balances} | {a["node"] for a in alarms})
    for node in nodes:
        rows = [b for b in balances if b["node"] == node]
        counts = {s: sum(b["status"] == s for b in rows) for s in
                  ("ok", "warning", "alarm", "inconclusive")}  # fmt: skip
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        lines.append(f"node {node}: {len(rows)} windows ({summary or 'none'})")
        if rows:
            lines.append(
                f"  {'window end (UTC)':<21}{'batch':>8}{'in kg':>11}{'out kg':>11}"
                f"{'Δinv kg':>10}{'imbal kg':>10}{'tol kg':>9}{'cover':>7}{'yield':>8}  status"
            )
        for b in rows:
            lines.append(
                f"  {b['window_end'][:19]:<21}{(b.get('batch') or ''):>8}"
                f"{_f(b['in_kg'], 11)}{_f(b['out_kg'], 11)}{_f(b['delta_inventory_kg'], 10)}"
                f"{_f(b['imbalance_kg'], 10)}{_f(b['tolerance_kg'], 9)}"
                f"{_f((b['coverage'] or 0) * 100, 6, 0)}%"
                f"{_pct((b.get('accounting') or {}).get('yield'), 8)}  {b['status']}"
            )
        for a in (a for a in alarms if a["node"] == node):
            lines.append(f"  {a['at'][:19]} alarm {a['event']} (since {a['since'][:19]}): "
                         f"{a['hint']}")  # fmt: skip
        lines.append("")
    return "\n".join(lines).rstrip()


def _pct(value: Any, width: int) -> str:
    if not isinstance(value, int | float):
        return "—".rjust(width)
    return f"{value * 100:{width - 1}.2f}%"


def summary_table(groups: list[Any], overlapping: list[str], by: str) -> str:
    """Per node, one row per batch, shift, day or campaign: what went in, the product and
    the yield, each other class of output, and the unaccounted loss with its uncertainty."""
    lines = []
    for node in overlapping:
        lines.append(
            f"node {node}: rolling windows overlap and are not summed (give it a calendar or "
            "batch window)"
        )
    nodes = list(dict.fromkeys(g.node for g in groups))
    for node in nodes:
        rows = [g.body() for g in groups if g.node == node]
        others = [c for c in OUTPUT_CLASSES[1:] if any(c in r["outputs_kg"] for r in rows)]
        lines.append(f"node {node} by {by}: {len(rows)}")
        head = f"  {by:<18}{'windows':>8}{'in kg':>12}{'product kg':>12}{'yield':>8}{'theory':>8}"
        head += "".join(f"{c + ' kg':>12}" for c in others)
        lines.append(head + f"{'unaccounted kg':>16}{'± kg':>9}")
        for r in rows:
            incomplete = r["windows_without_data"] or any(s != "ok" for s in r["statuses"])
            line = (
                f"  {r['group'][:17]:<18}{r['windows']:>8}{_f(r['in_kg'], 12)}"
                f"{_f(r['outputs_kg'].get(PRODUCT), 12)}{_pct(r['yield'], 8)}"
                f"{_pct(r['theoretical_yield'], 8)}"
            )
            line += "".join(_f(r["outputs_kg"].get(c), 12) for c in others)
            line += f"{_f(r['unaccounted_kg'], 16)}{_f(r['unaccounted_uncertainty_kg'], 9)}"
            if incomplete:
                line += "  " + ", ".join(f"{n} {s}" for s, n in r["statuses"].items())
                if r["windows_without_data"]:
                    line += f" ({r['windows_without_data']} without data, not summed)"
            lines.append(line)
        lines.append("")
    return "\n".join(lines).rstrip()


def _grouping(args: argparse.Namespace, config: Any, wanted: set[str]) -> Grouping:
    """--by with its shift times and time zone, taken from a calendar node unless given."""
    calendars = [n for n in config.nodes if n.window_kind == CALENDAR]
    calendars.sort(key=lambda n: n.name not in wanted)
    zone = args.timezone or (calendars[0].timezone if calendars else "UTC")
    if args.shifts is not None:
        shifts = _shift_times(args.shifts)
    else:
        shifts = calendars[0].calendar if calendars else ()
    if args.by == "shift" and not shifts:
        raise ValueError(
            "--by shift needs the plant's shift times: no node has a calendar window, so give "
            "--shifts 06:00,14:00,22:00 (and --timezone)"
        )
    if args.timezone is not None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # noqa: PLC0415

        try:
            ZoneInfo(args.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"'{args.timezone}' is not a time zone like Europe/Berlin") from None
    return Grouping(args.by, shifts, zone, args.campaign_prefix)


def _shift_times(text: str) -> tuple[tuple[int, int], ...]:
    times = set()
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*", part)
        if not match or int(match[1]) > 23 or int(match[2]) > 59:
            raise ValueError(f"--shifts '{text}' is not a list of times like 06:00,14:00,22:00")
        times.add((int(match[1]), int(match[2])))
    return tuple(sorted(times))


def setup(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Print the balance windows and alarm events of CONFIG's gateway kept in its state "
        "database (for balance.retention), per node, between --from and --to; with --by, "
        "their yield and losses summed per batch, shift, day or campaign. Times are "
        "ISO 8601 (UTC unless an offset is given) or durations ago like 24h. Runs beside "
        "the agent: the database is opened read-only. Exit status 0 when something was "
        "found, 1 when the range holds nothing, 2 for bad input."
    )
    p.add_argument("config", metavar="CONFIG", help="the agent's YAML configuration file")
    p.add_argument("--from", dest="since", default="24h", help="start (default %(default)s ago)")
    p.add_argument("--to", dest="until", help="end (default: now)")
    p.add_argument("--node", action="append", help="only this node (repeatable)")
    p.add_argument("--json", action="store_true", help="the records as a JSON document")
    p.add_argument(
        "--by",
        choices=BY,
        help="sum calendar and batch windows per batch, shift, production day or campaign: "
        "inputs, outputs by class (product, scrap...), yield, known and unaccounted losses",
    )
    p.add_argument(
        "--shifts",
        metavar="HH:MM,...",
        help="shift start times for --by shift and day (default: the first calendar node's; "
        "the day begins at the first shift)",
    )
    p.add_argument(
        "--timezone", help="the plant's time zone for --by shift and day (default: the node's)"
    )
    p.add_argument(
        "--campaign-prefix",
        type=int,
        default=0,
        metavar="N",
        help="--by campaign without a campaign tag: a batch's campaign is its id's first N "
        "characters (default: the id less its last part after - _ / . or :, C7-012 → C7)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import config as config_module  # noqa: PLC0415  (not for every command's start)

    try:
        config = config_module.load(Path(args.config))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_BAD_INPUT
    now = time.time()
    try:
        since = parse_time(args.since, now=now)
        until = parse_time(args.until, now=now) if args.until else math.inf
    except (ValueError, OverflowError) as exc:
        print(f"massgate report: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if until <= since:
        print(
            f"massgate report: error: --to {args.until} is not after --from {args.since}: "
            "the range holds no time",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    known = {n.name for n in config.nodes}
    # Reconciliation's gross-error alarms belong to the network of nodes, not to one node.
    extra = {"network"} if config.reconciliation is not None else set()
    for node in args.node or ():
        if node not in known | extra:
            listed = ", ".join(sorted(known)) or "none are configured"
            if extra:
                listed += "; 'network' for reconciliation alarms"
            print(
                f"massgate report: error: no node named '{node}' (nodes: {listed})", file=sys.stderr
            )
            return EXIT_BAD_INPUT
    known |= extra
    grouping = None
    if args.by is not None:
        try:
            if args.campaign_prefix < 0:
                raise ValueError(f"--campaign-prefix {args.campaign_prefix} is below zero")
            grouping = _grouping(args, config, set(args.node or known))
        except ValueError as exc:
            print(f"massgate report: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    try:
        found = read(config.outbox.path, ("balance", "alarm"), since, until)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return EXIT_NOTHING
    wanted = set(args.node or known)
    # A window a late entry corrected is kept twice: its correction stands for it.
    balances = latest(b for b in found["balance"] if b["node"] in wanted)
    alarms = [a for a in found["alarm"] if a["node"] in wanted]
    if grouping is not None:
        groups, overlapping = summarize(balances, grouping)
        if args.json:
            bodies = [g.body() for g in groups]
            json.dump({"by": args.by, "groups": bodies, "not_summed": overlapping}, sys.stdout,
                      indent=1)  # fmt: skip
            print()
        elif groups or overlapping:
            print(summary_table(groups, overlapping, args.by))
        else:
            print(f"no calendar or batch windows in that range to sum by {args.by}",
                  file=sys.stderr)  # fmt: skip
        return EXIT_OK if groups else EXIT_NOTHING
    if args.json:
        json.dump({"balances": balances, "alarms": alarms}, sys.stdout, indent=1)
        print()
    elif balances or alarms:
        print(table(balances, alarms))
    else:
        print("no balance windows or alarms in that range", file=sys.stderr)
    return EXIT_OK if balances or alarms else EXIT_NOTHING
