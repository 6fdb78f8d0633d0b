"""What leaves the gateway: record kinds, their priorities and their topics."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SCHEMA_VERSION = 1


class Priority(enum.IntEnum):
    """When the outbox is full, the lowest priority goes first; the highest is sent first."""

    TELEMETRY = 0
    TOTALS = 1
    BALANCE = 2
    ALARM = 3


KIND_PRIORITY = {
    "telemetry": Priority.TELEMETRY,
    "totals": Priority.TOTALS,
    "hourly": Priority.TOTALS,
    "audit": Priority.BALANCE,
    "entry": Priority.BALANCE,
    "balance": Priority.BALANCE,
    "reconciliation": Priority.BALANCE,
    "alarm": Priority.ALARM,
}


@dataclass(frozen=True, slots=True)
class Record:
    """One message to publish; `body` is JSON-serializable and gains the envelope at put()."""

    kind: str
    body: dict[str, Any]
    created: float  # time.time()

    @property
    def priority(self) -> Priority:
        return KIND_PRIORITY[self.kind]


def num(value: float | None) -> float | None:
    """A figure for a record: JSON has no NaN, so a value that could not be computed is null;
    six decimals are more than any meter resolves."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), 6)


def utc(wall: float | None) -> str | None:
    """UTC wall time as ISO 8601 with microseconds and a Z."""
    if wall is None:
        return None
    return (
        datetime.fromtimestamp(wall, tz=UTC)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )


def topic(prefix: str, site: str, gateway: str, kind: str) -> str:
    return f"{prefix}/{site}/{gateway}/{kind}"


def command_topics(prefix: str, site: str, gateway: str) -> tuple[str, str]:
    """Where the agent takes commands from the broker, and where it answers them. A level
    below the records' topics, so that a consumer's <prefix>/<site>/+/+ sees neither."""
    base = topic(prefix, site, gateway, "command")
    return f"{base}/request", f"{base}/answer"


def parse_utc(text: str) -> float:
    """An ISO 8601 time as epoch seconds: UTC unless it says otherwise. Raises ValueError."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"'{text}' is not a time like 2026-11-23T06:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
