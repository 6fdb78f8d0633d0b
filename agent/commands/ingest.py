"""`massgate ingest run|report CONFIG`: the other end of the pipe, into PostgreSQL."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..core.yamlsource import ConfigError
from .common import EXIT_BAD_CONFIG, EXIT_FAILED, EXIT_OK, print_config_error, setup_logging

COLUMNS = (
    ("site", "site"),
    ("gateway", "gateway"),
    ("epoch", "epoch"),
    ("received", "received"),
    ("duplicates", "dupl."),
    ("stored", "stored"),
    ("first_seq", "first"),
    ("last_seq", "last"),
    ("missing", "missing"),
    ("pending", "in outbox"),
    ("dropped", "dropped"),
    ("unexplained", "UNEXPLAINED"),
)
SITE_COLUMNS = (
    ("site", "site"),
    ("node", "node across gateways"),
    ("evaluated_to", "judged up to"),
    ("status", "last window"),
    ("imbalance_kg", "imbalance kg"),
    ("tolerance_kg", "tolerance kg"),
    ("alarms", "alarms raised"),
    ("revised", "revised"),
    ("waiting", "waiting for"),
)


def setup(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Store every gateway's records in PostgreSQL (run), or print what arrived from each "
        "gateway and every missing sequence number, explained or not (report). CONFIG is the "
        "ingest's own YAML file: mqtt (as the agent's, with a client_id of its own), database "
        "(url, password_file or password_env), take (sites, shared) and, optionally, balances "
        "(nodes whose terms are streams and inventories of several gateways: GATEWAY/NAME)."
    )
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = sub.add_parser(
        "run",
        help="subscribe and store until SIGTERM or Ctrl-C",
        description=(
            "Subscribe to the gateways' topics with a persistent MQTT 5 session and store each "
            "record in PostgreSQL before acknowledging it; duplicates are counted, not stored "
            "twice. With a 'balances' section it also judges the nodes across gateways on their "
            "totals, once every term's data is in. Exits 0 on SIGTERM/SIGINT, 2 for a bad "
            "configuration."
        ),
    )
    run.add_argument("config", metavar="CONFIG", help="the ingest's YAML configuration file")
    run.set_defaults(func=run_main)
    report = sub.add_parser(
        "report",
        help="what arrived per gateway, duplicates and gaps",
        description=(
            "Per gateway and epoch: records received, duplicates, stored, the sequence numbers "
            "seen, and the missing ones: still in the gateway's outbox (its last status), "
            "dropped by it (counted), or UNEXPLAINED; and each node across gateways: how far it "
            "is judged, its last window, alarms, windows revised when totals taken as lost "
            "arrived after all, and what it waits for; and the gaps in totals still taken as "
            "lost. Exits 0 when nothing is unexplained, 1 when something is, 2 for a bad "
            "configuration or an unreachable database."
        ),
    )
    report.add_argument("config", metavar="CONFIG", help="the ingest's YAML configuration file")
    report.add_argument("--json", action="store_true", help="the rows as a JSON document")
    report.set_defaults(func=report_main)


def _load(path: str) -> Any:
    from ..ingest.config import load  # noqa: PLC0415  (psycopg and paho only for ingest)

    try:
        import orjson  # noqa: F401, PLC0415
        import psycopg  # noqa: F401, PLC0415
    except ImportError:
        print(
            "error: massgate ingest needs psycopg and orjson: pip install 'massgate[ingest]'",
            file=sys.stderr,
        )
        return None

    try:
        return load(Path(path))
    except ConfigError as exc:
        print_config_error(exc)
        return None


def run_main(args: argparse.Namespace) -> int:
    # First of all: a stop asked for while the ingest is still starting is a clean stop too.
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    config = _load(args.config)
    if config is None:
        return EXIT_BAD_CONFIG
    setup_logging(args.verbose)
    from ..ingest.consumer import Ingest  # noqa: PLC0415

    judge = None
    try:
        ingest = Ingest(config)
        if (balances := config.balances) is not None:
            from ..ingest import site  # noqa: PLC0415

            def publish(subtopic: str, body: dict[str, Any]) -> None:
                ingest.publish_site(balances.site, subtopic, body)

            # Beside the storing, in a thread of its own with its own connection: a slow
            # judgement never holds back an acknowledgement.
            judge = threading.Thread(
                target=site.run,
                args=(balances, config.database.url, config.database.password(), stop),
                kwargs={"publish": publish if balances.publish else None},
                name="site-balances",
                daemon=True,
            )
            judge.start()
        ingest.run(stop)
    except ValueError as exc:  # a password's file or variable is missing
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    finally:
        stop.set()
        if judge is not None:
            judge.join()
    return EXIT_OK


def report_main(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_BAD_CONFIG
    from ..ingest.store import Store  # noqa: PLC0415

    try:
        store = Store(
            config.database.url,
            password=config.database.password(),
            prefix=config.mqtt.topic_prefix,
        )
    except Exception as exc:  # psycopg's errors, a missing password
        print(f"error: cannot open {config.database.shown}: {exc}".strip(), file=sys.stderr)
        return EXIT_BAD_CONFIG
    try:
        rows = store.accounting()
        rejected = store.rejected()
        nodes = store.site_balances()
        lost = store.lost_totals() if nodes else 0
    finally:
        store.close()
    unexplained = sum(int(r["unexplained"] or 0) for r in rows)
    if args.json:
        print(
            json.dumps(
                {
                    "gateways": rows,
                    "rejected": rejected,
                    "unexplained": unexplained,
                    "site_balances": nodes,
                    "site_totals_lost": lost,
                },
                default=str,
                indent=1,
            )
        )
    else:
        _print_table(rows, COLUMNS, "no records yet")
        if nodes:
            print()
            _print_table(nodes, SITE_COLUMNS, "")
            print(f"gaps in totals taken as lost, not arrived since (massgate.site_gaps): {lost}")
            print()
        print(f"rejected messages (massgate.rejects): {rejected}")
        print(f"unexplained missing records: {unexplained}")
    return EXIT_FAILED if unexplained else EXIT_OK


def _print_table(
    rows: list[dict[str, Any]], columns: tuple[tuple[str, str], ...], empty: str
) -> None:
    if not rows:
        print(empty)
        return
    cells = [[_cell(r[key]) for key, _ in columns] for r in rows]
    widths = [max(len(title), *(len(c[i]) for c in cells)) for i, (_, title) in enumerate(columns)]
    print("  ".join(title.ljust(w) for (_, title), w in zip(columns, widths, strict=True)))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return str(value)
