"""What a driver hands the agent: values with a time and a quality.

These are the only agent types the drivers import (see DESIGN.md, "Boundaries").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Quality(enum.IntEnum):
    """OPC-style quality of a value. Ordered: a larger number is worse."""

    GOOD = 0
    UNCERTAIN = 1
    BAD = 2
    STALE = 3


@dataclass(frozen=True, slots=True)
class Batch:
    """Values read from one device in one poll.

    `mono` is time.monotonic() when the reply arrived (integration runs on it: a Raspberry Pi
    without RTC steps its wall clock at boot); `wall` is time.time() at the same instant, for
    records. Values are in SI units already. A failed poll is a Batch with quality BAD and NaN
    values for every tag, so the totalizer knows the data stopped rather than guessing.
    """

    device: str
    mono: float
    wall: float
    values: dict[str, float]
    quality: Quality
    error: str | None = None
    # The meter's own alarms active in this reply (tags of its status flags marked `alarm` in
    # its profile): the meter says its values are UNCERTAIN or BAD, and the quality says so.
    alarms: tuple[str, ...] = ()
