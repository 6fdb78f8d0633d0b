"""The gateway's own archive: a copy of every record of an archived kind, kept after the
broker has it (hourly quantities and balances for a retention, audit entries for good), as
a flow computer keeps its logs; `massgate report` reads it."""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Sequence
from typing import Any

# Kinds the gateway keeps a copy of after sending, for `massgate report` and audits.
ARCHIVED = ("hourly", "audit", "balance", "alarm", "reconciliation", "entry")


def copy(conn: sqlite3.Connection, rows: Sequence[tuple[int, str, float, bytes]]) -> None:
    """Inside the put's transaction: (seq, kind, created, payload) of the records put."""
    conn.executemany(
        "INSERT INTO archive(seq, kind, created, payload) VALUES (?, ?, ?, ?)",
        [row for row in rows if row[1] in ARCHIVED],
    )


def read(
    conn: sqlite3.Connection, kind: str, *, since: float = -math.inf, until: float = math.inf
) -> list[dict[str, Any]]:
    """Archived payloads of one kind created in [since, until), oldest first."""
    rows = conn.execute(
        "SELECT payload FROM archive WHERE kind = ? AND created >= ? AND created < ? ORDER BY seq",
        (kind, since, until),
    )
    return [json.loads(payload) for (payload,) in rows]


def prune(conn: sqlite3.Connection, kind: str, before: float) -> int:
    """Delete archived records of `kind` created before `before`; returns how many."""
    return conn.execute(
        "DELETE FROM archive WHERE kind = ? AND created < ?", (kind, before)
    ).rowcount
