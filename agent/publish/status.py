"""What the link has done, and the retained status message built from it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core.records import utc
from ..store.outbox import Outbox


@dataclass
class LinkStatus:
    connected: bool = False
    broker: str | None = None
    last_error: str | None = None
    last_publish: float | None = None
    connects: int = 0
    published: int = 0
    acked: int = 0
    window: int = 0  # messages in flight allowed on this connection
    refused: dict[str, int] = field(default_factory=dict)  # PUBACK failure reason: count


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def status_payload(
    state: str,
    *,
    site: str,
    gateway: str,
    outbox: Outbox,
    link: LinkStatus,
    health: Callable[[], dict[str, Any]] | None,
    **extra: Any,
) -> bytes:
    """The retained message on the status topic: online with the outbox's and the link's
    figures and the agent's health, or offline (the last will, the goodbye)."""
    body: dict[str, Any] = {
        "schema": 1,
        "kind": "status",
        "site": site,
        "gateway": gateway,
        "status": state,
        "time": utc(time.time()),
    }
    if state == "online":
        body["outbox"] = {
            "depth": outbox.depth(),
            "bytes": outbox.size(),
            "oldest_age_s": _round(outbox.oldest_age()),
            "dropped": outbox.dropped(),
            "last_seq": outbox.last_seq(),
            "epoch": outbox.epoch,
        }
        body["link"] = {
            "broker": link.broker,
            "connects": link.connects,
            "published": link.published,
            "acked": link.acked,
            "refused": dict(link.refused),
        }
        if health is not None:
            body.update(health())
    body.update(extra)
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
