"""One picture of the running agent, for `massgate status`, the status topic, systemd's
STATUS line and the metrics endpoint; and the watchdog's judgement of progress.

The snapshot is built on the event loop once a second and replaced whole, so that readers on
other threads (the MQTT link, the metrics server) only ever see a finished one.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from massgate.drivers.base import Poller

from ..core.records import num, utc

if TYPE_CHECKING:
    from .pipeline import Agent

log = logging.getLogger(__name__)

SNAPSHOT_EVERY = 1.0  # s


def devices(pollers: Sequence[Poller]) -> dict[str, dict[str, Any]]:
    result = {}
    for p in pollers:
        h = p.health
        result[p.device.name] = {
            "up": p.up,
            "endpoint": p.device.endpoint,
            "last_good": utc(h.last_good),
            "first_good": utc(h.first_good),
            "down_since": utc(h.down_since),
            "good_polls": h.good,
            "failed_polls": h.failed,
            "last_error": h.last_error,
            "stopped": h.stopped,
        }
    return result


def snapshot(agent: Agent, *, started: float) -> dict[str, Any]:
    """Everything `massgate status` shows; JSON-ready."""
    gw = agent.gateway
    streams = {
        name: {
            "forward_kg": num(s.forward),
            "reverse_kg": num(s.reverse),
            "net_kg": num(s.net),
            "flow_kg_s": num(s.last_flow),
            # The meter's own alarms: active in its last reply, and samples taken under each.
            "meter_alarms": {"active": list(s.meter_alarms), "samples": dict(s.alarm_samples)},
        }
        | ({"dry_net_kg": num(gw.dry[name].net)} if name in gw.dry else {})
        for name, s in gw.streams.items()
    }
    nodes: dict[str, dict[str, Any]] = {}
    for node in gw.nodes:
        last = node.last
        nodes[node.config.name] = {
            "alarm_active": node.alarm_active,
            "status": last.status if last is not None else None,
            "window_end": utc(last.end_wall) if last is not None else None,
            "imbalance_kg": num(last.imbalance) if last is not None else None,
            "tolerance_kg": num(last.tolerance) if last is not None else None,
            "relative": num(last.relative) if last is not None else None,
        }
    outbox = agent.outbox
    oldest = outbox.oldest_age()
    body: dict[str, Any] = {
        "site": agent.config.gateway.site,
        "gateway": agent.config.gateway.id,
        "time": utc(time.time()),
        "pid": os.getpid(),
        "config": str(agent.config.source),
        "started": utc(started),
        "uptime_s": round(time.time() - started, 1),
        "devices": devices(agent.pollers),
        "streams": streams,
        "nodes": nodes,
        "alarms_active": sorted(n for n, v in nodes.items() if v["alarm_active"]),
        "outbox": {
            "depth": outbox.depth(),
            "bytes": outbox.size(),
            "oldest_age_s": None if oldest is None else round(oldest, 1),
            "dropped": outbox.dropped(),
            "held_in_memory": outbox.held(),
            "last_seq": outbox.last_seq(),
            "epoch": outbox.epoch,
            "syncs": outbox.syncs,
        },
    }
    publisher = agent.publisher
    if publisher is None:
        body["broker"] = None
    else:
        st = publisher.status
        body["broker"] = {
            "connected": st.connected,
            "broker": st.broker,
            "last_error": st.last_error,
            "last_publish": utc(st.last_publish),
            "published": st.published,
            "acked": st.acked,
            "connects": st.connects,
        }
        if publisher.commands is not None:
            body["broker"]["commands"] = publisher.commands.summary(publisher.command_topics[0])
    if agent.reload_error is not None:
        body["reload_refused"] = agent.reload_error
    body["restarts"] = dict(agent.restarts)
    return body


def summary_line(snap: dict[str, Any]) -> str:
    """systemd's one-line STATUS: devices up, outbox, alarms, broker."""
    devs = snap["devices"]
    up = sum(1 for d in devs.values() if d["up"])
    parts = [f"{up}/{len(devs)} devices up"]
    box = snap["outbox"]
    outbox = f"outbox {box['depth']}"
    if box["oldest_age_s"] is not None and box["depth"]:
        outbox += f" (oldest {age_text(box['oldest_age_s'])})"
    dropped = sum(box["dropped"].values())
    if dropped:
        outbox += f", {dropped} dropped"
    parts.append(outbox)
    alarms = snap["alarms_active"]
    parts.append(f"alarms: {', '.join(alarms)}" if alarms else "no alarm")
    broker = snap["broker"]
    if broker is None:
        parts.append("no broker configured")
    elif broker["connected"]:
        parts.append(f"broker {broker['broker']}")
    else:
        parts.append("broker not connected")
    if "reload_refused" in snap:
        parts.append("last reload refused")
    return "; ".join(parts)


def age_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


class Progress:
    """Whether the pipeline moves: the watchdog is fed only while it does.

    The processing cycle runs on the event loop with the pollers, so a blocked loop (a hung
    SQLite write, a kernel that never returns) stops the feeding by itself. Beyond that:
    some poller must have finished a poll, good or failed, within its own bound (a dead
    meter is not a hung agent; drivers that stopped trying are), and the MQTT thread must be
    alive and, while connected, turning its loop.
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.cycles = 0
        self._stuck: str | None = None

    def check(self, agent: Agent, now: float) -> str | None:
        """None when the pipeline made progress, else what is stuck."""
        self.cycles += 1
        reason = self._reason(agent, now)
        if reason != self._stuck:
            if reason is not None:
                log.error(
                    "watchdog not fed: %s; systemd restarts the agent if this lasts %g s",
                    reason,
                    self.limit,
                )
            elif self._stuck is not None:
                log.info("watchdog fed again: the pipeline makes progress")
            self._stuck = reason
        return reason

    def _reason(self, agent: Agent, now: float) -> str | None:
        pollers = [p for p in agent.pollers if not p.health.stopped]
        if pollers:
            late = [
                (now - p.health.last_attempt, p)
                for p in pollers
                if now - p.health.last_attempt > max(self.limit / 2, p.health.stall_after)
            ]
            if len(late) == len(pollers):
                age, _ = min(late, key=lambda x: x[0])
                return f"no device poll finished for {age:.0f} s"
        if agent.publisher is not None:
            return agent.publisher.stalled(now, self.limit / 2)
        return None
