"""`massgate status`: what the running agent says about itself, for a person at an SSH prompt."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from .. import config as config_module
from ..config import STATUS_SOCKET
from ..core.yamlsource import ConfigError
from ..runtime.health import age_text
from ..runtime.statusserver import StatusUnavailable, fetch
from .common import EXIT_BAD_CONFIG, EXIT_OK

DEFAULT_CONFIG = "/etc/massgate/massgate.yaml"
EXIT_NOT_RUNNING = 3  # as `systemctl status` says of a unit that is not active


def setup(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Ask the running agent (over its local status socket) how it is: each "
        "device up or down with its last good poll and error counts, stream totals, node "
        "balances and alarms, outbox depth, oldest record and drops, the broker connection. "
        "Exits 0 when the agent answered, 3 when no agent is running."
    )
    p.add_argument(
        "config",
        metavar="CONFIG",
        nargs="?",
        default=DEFAULT_CONFIG,
        help="the agent's configuration file, to find its socket (default %(default)s)",
    )
    p.add_argument("--socket", metavar="PATH", help="the status socket, instead of CONFIG's")
    p.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    if args.socket:
        socket_path = Path(args.socket)
    else:
        try:
            socket_path = config_module.load(Path(args.config)).health.socket
        except ConfigError as exc:
            # The file may have been edited since the agent started (a refused reload is
            # exactly when one wants its status): find the socket from the keys that name it.
            found = _socket_of_raw(Path(args.config))
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            if found is None:
                print(
                    f"cannot find the status socket without {args.config}: name the agent's "
                    "configuration, or the socket with --socket PATH",
                    file=sys.stderr,
                )
                return EXIT_BAD_CONFIG
            print(f"{args.config} has problems; asking the agent anyway", file=sys.stderr)
            socket_path = found
    try:
        snap = fetch(socket_path)
    except StatusUnavailable as exc:
        print(f"massgate status: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    if not snap:
        # The socket opens before the outbox and the devices: the first snapshot follows.
        print("massgate is starting: no snapshot yet; ask again in a second")
        return EXIT_OK
    if args.json:
        json.dump(snap, sys.stdout, indent=2)
        print()
    else:
        print(render(snap))
    return EXIT_OK


def _socket_of_raw(path: Path) -> Path | None:
    """health.socket, or <gateway.state_dir>/status.sock, read without validating the rest."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        health = raw.get("health") or {}
        where = health.get("socket") or Path(raw["gateway"]["state_dir"]) / STATUS_SOCKET
    except (OSError, yaml.YAMLError, AttributeError, KeyError, TypeError):
        return None
    return (
        path.resolve().parent / Path(where).expanduser()
    )  # a relative path is relative to the file, as in the agent


def _ago(text: str | None, now: float) -> str:
    if text is None:
        return "never"
    return age_text(max(now - datetime.fromisoformat(text).timestamp(), 0.0)) + " ago"


def _kg(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f} kg".replace(",", " ")


def render(snap: dict[str, Any]) -> str:
    now = time.time()
    lines = [
        f"massgate {snap['site']}/{snap['gateway']}: running, pid {snap['pid']}, "
        f"up {age_text(snap['uptime_s'])}, config {snap['config']}"
    ]
    if "reload_refused" in snap:
        lines.append(f"  last reload refused: {snap['reload_refused']}")
    if restarts := snap.get("restarts"):
        listed = ", ".join(f"{name} {count}" for name, count in sorted(restarts.items()))
        lines.append(f"  restarted after an unexpected error: {listed} (see the journal)")
    broker = snap["broker"]
    if broker is None:
        lines.append("broker: none configured; records stay in the outbox")
    elif broker["connected"]:
        lines.append(
            f"broker: connected to {broker['broker']}; last publish "
            f"{_ago(broker['last_publish'], now)}; {broker['published']} published, "
            f"{broker['acked']} acknowledged"
        )
    else:
        lines.append(
            f"broker: NOT CONNECTED ({broker['last_error'] or 'connecting'}); last publish "
            f"{_ago(broker['last_publish'], now)}"
        )
    if broker is not None and (commands := broker.get("commands")) is not None:
        if commands["subscribed"] is False:
            state = f"NOT TAKEN: the broker refused the subscription ({commands['broker_refusal']})"
        else:
            state = "taken" if commands["subscribed"] else "subscribing"
        lines.append(
            f"  commands from the broker ({', '.join(commands['allowed'])}) on "
            f"{commands['topic']}: {state}; {commands['taken']} carried out, "
            f"{commands['refused']} refused"
        )
    box = snap["outbox"]
    dropped = ", ".join(f"{k} {v}" for k, v in box["dropped"].items() if v) or "none"
    oldest = "" if not box["depth"] else f", oldest {age_text(box['oldest_age_s'] or 0.0)}"
    held = f"; {box['held_in_memory']} held in memory (disk full)" if box["held_in_memory"] else ""
    lines.append(
        f"outbox: {box['depth']} records ({box['bytes'] / 1024:.0f} KiB){oldest}; "
        f"dropped: {dropped}{held}"
    )
    devices = snap["devices"]
    up = sum(1 for d in devices.values() if d["up"])
    lines.append(f"devices: {up} of {len(devices)} up")
    width = max((len(n) for n in devices), default=0)
    for name, d in devices.items():
        counts = f"{d['good_polls']} good, {d['failed_polls']} failed"
        if d["up"]:
            state = f"up    last good {_ago(d['last_good'], now)}; {counts}"
        else:
            why = "STOPPED" if d["stopped"] else "DOWN"
            since = f" since {_ago(d['down_since'], now)}" if d["down_since"] else ""
            state = f"{why:<5} {counts}{since}; last good {_ago(d['last_good'], now)}"
            if d["last_error"]:
                state += f"\n  {'':<{width}}  {d['last_error']}"
        lines.append(f"  {name:<{width}}  {state}")
    streams = snap["streams"]
    if streams:
        lines.append("streams:")
        width = max(len(n) for n in streams)
        for name, st in streams.items():
            flow = "—" if st["flow_kg_s"] is None else f"{st['flow_kg_s']:.3f} kg/s"
            dry = f", dry net {_kg(st['dry_net_kg'])}" if "dry_net_kg" in st else ""
            lines.append(
                f"  {name:<{width}}  forward {_kg(st['forward_kg'])}, reverse "
                f"{_kg(st['reverse_kg'])}, flow {flow}{dry}"
            )
            alarms = st.get("meter_alarms") or {}
            for tag, samples in (alarms.get("samples") or {}).items():
                now_ = ", ACTIVE" if tag in alarms.get("active", ()) else ""
                lines.append(f"  {'':<{width}}  meter alarm {tag}: {samples} samples{now_}")
    nodes = snap["nodes"]
    if nodes:
        lines.append("nodes:")
        width = max(len(n) for n in nodes)
        for name, n in nodes.items():
            if n["status"] is None:
                lines.append(f"  {name:<{width}}  no window closed yet")
                continue
            alarm = "  ALARM" if n["alarm_active"] else ""
            lines.append(
                f"  {name:<{width}}  {n['status']}{alarm}: imbalance {_kg(n['imbalance_kg'])} "
                f"(tolerance {_kg(n['tolerance_kg'])}), window ending {n['window_end']}"
            )
    alarms = snap["alarms_active"]
    lines.append(f"alarms: {', '.join(alarms)}" if alarms else "alarms: none")
    return "\n".join(lines)
