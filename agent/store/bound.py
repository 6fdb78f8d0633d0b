"""The outbox's bound: eviction by priority, maximum ages, the disk's own room, and the
count of what was dropped (kept in the database, reported upstream, logged once a minute).

The queue is bounded in bytes; when full it drops the lowest-priority, oldest records first.
A disk with less room than the bound lowers the bound, so that eviction makes room before
SQLite finds the disk full.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

from ..core.records import Priority

log = logging.getLogger(__name__)

HELD_MAX = 10_000  # records kept in memory while the disk is full
FULL_RETRY = 1.0  # s between tries to write held records while the disk is full
DISK_CHECK = 2.0  # s between looks at the free space on the outbox's disk
DISK_RESERVE = 4 * 1024 * 1024  # bytes left free on the disk (WAL, journal, other programs)
DISK_OVERHEAD = 2.0  # bytes of file (indexes, pages, archive copy) per byte of payload
SEQ_END = (1 << 63) - 1  # above every sequence number
EXPIRE_EVERY = 60.0  # s between maximum-age sweeps
DROP_LOG_EVERY = 60.0  # s between warnings about dropped records
# A change of wall minus monotonic time beyond this is a step of the clock, not drift.
CLOCK_STEP = 60.0


def disk_room(path: str, stored: int) -> int | None:
    """Bytes of records the outbox's disk can hold: what is stored plus what the free space
    (less a reserve, over the file's overhead per byte) can take; None when it cannot tell."""
    try:
        st = os.statvfs(Path(path).parent)
    except OSError:
        return None
    free = st.f_bavail * st.f_frsize
    return stored + int(max(free - DISK_RESERVE, 0) / DISK_OVERHEAD)


def evict(conn: sqlite3.Connection, size: int, limit: int) -> tuple[int, dict[int, int]]:
    """Inside a transaction: drop lowest-priority, oldest records until under `limit`.

    Returns the bytes freed and the records dropped by priority (counted in the database).
    """
    if size <= limit:
        return 0, {}
    excess = size - limit
    freed = 0
    dropped: dict[int, int] = {}
    cursor = conn.execute("SELECT seq, priority, size FROM outbox ORDER BY priority, seq")
    victims = []
    for seq, priority, row_size in cursor:
        if excess <= 0:
            break
        victims.append((seq,))
        dropped[priority] = dropped.get(priority, 0) + 1
        excess -= row_size
        freed += row_size
    conn.executemany("DELETE FROM outbox WHERE seq = ?", victims)
    persist_dropped(conn, dropped)
    return freed, dropped


def expire(
    conn: sqlite3.Connection, max_age: dict[Priority, float], now: float, stepped_at: float | None
) -> tuple[int, dict[int, int]]:
    """Inside a transaction: drop records older than their priority's maximum age.

    After a forward step of the wall clock (`stepped_at`), ages count from the step.
    """
    dropped: dict[int, int] = {}
    freed = 0
    for priority, age in max_age.items():
        if stepped_at is not None and now - age < stepped_at:
            continue  # every record is younger than `age` counted from the step
        # The records of a priority are made in seq order: the expired ones are those before
        # the first that is not, found by reading outbox_evict from the head of the range
        # (as many rows as have expired, plus one). A record made after the wall clock
        # stepped back goes with those made before it, not by its earlier time stamp.
        young = conn.execute(
            "SELECT seq FROM outbox WHERE priority = ? AND created >= ? ORDER BY seq LIMIT 1",
            (int(priority), now - age),
        ).fetchone()
        below = young[0] if young is not None else SEQ_END
        count, size = conn.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM outbox WHERE priority = ? AND seq < ?",
            (int(priority), below),
        ).fetchone()
        if count:
            conn.execute(
                "DELETE FROM outbox WHERE priority = ? AND seq < ?", (int(priority), below)
            )
            dropped[int(priority)] = int(count)
            freed += int(size)
    persist_dropped(conn, dropped)
    return freed, dropped


def persist_dropped(conn: sqlite3.Connection, dropped: dict[int, int]) -> None:
    for priority, count in dropped.items():
        conn.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
            "SET value = CAST(value AS INTEGER) + excluded.value",
            (f"dropped_{Priority(priority).name.lower()}", str(count)),
        )


def load_dropped(conn: sqlite3.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT key, value FROM meta WHERE key LIKE 'dropped_%'").fetchall()
    return {key.removeprefix("dropped_"): int(value) for key, value in rows}


class Drops:
    """Records dropped since the database was made, by priority name; logged at once, then
    once a minute in sum (a full outbox drops at every cycle)."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        self._unlogged: dict[str, int] = {}
        self._logged_at = -float("inf")

    def add(self, dropped: dict[int, int], *, why: str, limit: int) -> None:
        named = {Priority(p).name.lower(): n for p, n in sorted(dropped.items())}
        for name, count in named.items():
            self.counts[name] = self.counts.get(name, 0) + count
            self._unlogged[name] = self._unlogged.get(name, 0) + count
        now = time.monotonic()
        if now - self._logged_at >= DROP_LOG_EVERY:
            log.warning(
                "outbox: %s (bound %d bytes): dropped %s; %s since the database was made",
                why,
                limit,
                self._unlogged,
                self.counts,
            )
            self._logged_at = now
            self._unlogged = {}


class ClockWatch:
    """Notices the wall clock stepping forward (NTP's first sync on a gateway without RTC).

    Records created before the step carry times of the old clock: by the new one they look
    hours or years old, and max-age expiry would drop them all at once. Their ages are
    counted from the step instead (`stepped_at`).
    """

    def __init__(self) -> None:
        self._offset: float | None = None  # wall minus monotonic time at the last look
        self.stepped_at: float | None = None  # wall time when it last stepped forward

    def look(self, now: float, mono: float) -> None:
        offset = now - mono
        if self._offset is not None and offset - self._offset > CLOCK_STEP:
            log.warning(
                "the wall clock stepped forward by %.0f s; records made before count their "
                "age (outbox.max_age) from now",
                offset - self._offset,
            )
            self.stepped_at = now
        self._offset = offset
