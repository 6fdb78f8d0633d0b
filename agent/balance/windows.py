"""Window boundaries: calendar shifts in a time zone, and batch labels."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo


def next_boundary(wall: float, times: tuple[tuple[int, int], ...], zone: str) -> float:
    """The first calendar boundary after `wall`: a local time of day in `zone`, as UTC epoch.

    Local times are resolved per day, so a shift that spans a daylight-saving change is an
    hour shorter or longer, as the plant's clocks say; a local time that does not exist that
    day (spring forward) falls an hour later, as the wall clock shows it.
    """
    tz = ZoneInfo(zone)
    today = datetime.fromtimestamp(wall, tz).date()
    best = math.inf
    for offset in (-1, 0, 1, 2):
        day = today + timedelta(days=offset)
        for hour, minute in times:
            at = datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz).timestamp()
            if wall < at < best:
                best = at
    return best


def previous_boundary(wall: float, times: tuple[tuple[int, int], ...], zone: str) -> float:
    tz = ZoneInfo(zone)
    today = datetime.fromtimestamp(wall, tz).date()
    best = -math.inf
    for offset in (-2, -1, 0, 1):
        day = today + timedelta(days=offset)
        for hour, minute in times:
            at = datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz).timestamp()
            if best < at <= wall:
                best = at
    return best


def batch_label(value: float) -> str:
    if not math.isfinite(value):  # never from a tag (bad readings are NaN), but never a crash
        return repr(value)
    return str(int(value)) if value == int(value) else repr(value)


MAX_LABEL = 64


def check_label(value: object, what: str) -> str:
    """A batch id, campaign or operator name as typed: printable text of 1 to 64 characters.

    Raises ValueError saying what is wrong.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what}: give a name or id, like C7-012")
    text = value.strip()
    if len(text) > MAX_LABEL:
        raise ValueError(f"{what}: at most {MAX_LABEL} characters, got {len(text)}")
    if not text.isprintable():
        raise ValueError(f"{what}: {text!r} holds a control character")
    return text
