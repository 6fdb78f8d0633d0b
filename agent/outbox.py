"""Store-and-forward queue in SQLite: committed before it is sent, deleted only when acked.

The same database holds the stream totals, so the totals record that reports a quantity and
the running total that contains it are committed in one transaction: a crash can neither
count a quantity twice nor lose it. It also keeps the gateway's own archive: a copy of every
hourly quantity record and configuration audit entry, kept after the broker has them (hourly
records for a retention, audit entries for good), as a flow computer keeps its logs.

Durability: WAL with synchronous=FULL. In WAL mode NORMAL would only risk the last
transactions on power loss; FULL syncs the WAL on every commit so a record the agent
considers stored survives a pulled plug on an SD card. Records of one cycle go in one
transaction, so that costs one sync per cycle, not per record.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils
from sqlite_utils.db import DescIndex

from .records import SCHEMA_VERSION, Priority, Record, topic, utc

log = logging.getLogger(__name__)

# Kinds the gateway keeps a copy of after sending, for `massgate report` and audits.
ARCHIVED = ("hourly", "audit", "balance", "alarm", "reconciliation")


@dataclass(frozen=True, slots=True)
class Message:
    seq: int
    priority: int
    topic: str
    payload: bytes


class Outbox:
    """`put(records)`, `take(n)`, `ack(seqs)` over one SQLite file (or ":memory:")."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_bytes: int,
        site: str,
        gateway: str,
        topic_prefix: str = "massgate",
    ) -> None:
        self.path = str(path)
        self.max_bytes = max_bytes
        self.site = site
        self.gateway = gateway
        self.topic_prefix = topic_prefix
        self.conn = self._open()
        # Kept in memory so that a put does not scan a million-record backlog to learn its size.
        self._bytes = int(
            self.conn.execute("SELECT coalesce(sum(size), 0) FROM outbox").fetchone()[0]
        )

    # --- set-up ---------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if self.path == ":memory:":
                raise
            aside = f"{self.path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
            log.error(
                "outbox %s is unreadable (%s); moved aside to %s and starting a new one",
                self.path,
                exc,
                aside,
            )
            for suffix in ("", "-wal", "-shm"):
                src = Path(self.path + suffix)
                if src.exists():
                    src.rename(aside + suffix)
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=FULL")
            db = sqlite_utils.Database(conn, execute_plugins=False)
            db.enable_wal()
            db.table("outbox").create(
                {
                    "seq": int,
                    "priority": int,
                    "kind": str,
                    "payload": bytes,
                    "created": float,
                    "size": int,
                },
                pk="seq",
                not_null={"priority", "kind", "payload", "created", "size"},
                if_not_exists=True,
            )
            db.table("outbox").create_index(
                ["priority", "seq"], index_name="outbox_evict", if_not_exists=True
            )
            db.table("outbox").create_index(
                [DescIndex("priority"), "seq"], index_name="outbox_send", if_not_exists=True
            )
            db.table("meta").create({"key": str, "value": str}, pk="key", if_not_exists=True)
            db.table("totals").create(
                {"stream": str, "state": str, "updated": float}, pk="stream", if_not_exists=True
            )
            db.table("archive").create(
                {"seq": int, "kind": str, "created": float, "payload": bytes},
                pk="seq",
                not_null={"kind", "created", "payload"},
                if_not_exists=True,
            )
            db.table("archive").create_index(
                ["kind", "created"], index_name="archive_kind", if_not_exists=True
            )
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('epoch', ?), ('next_seq', '1')",
                (secrets.token_hex(8),),
            )
            conn.execute("COMMIT")
            conn.execute("SELECT count(*) FROM outbox").fetchone()  # proves the file is readable
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        self.conn.close()

    # --- the contract ---------------------------------------------------------------------

    def put(
        self,
        records: Sequence[Record],
        *,
        totals: dict[str, Any] | None = None,
        meta: dict[str, str] | None = None,
    ) -> list[int]:
        """Commit records (and stream totals, and meta values) in one transaction.

        Returns the records' sequence numbers. Records of an archived kind are also copied to
        the archive, where they stay after the broker has acknowledged them.
        """
        if not records and not totals and not meta:
            return []
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            next_seq = int(self._meta("next_seq"))
            epoch = self._meta("epoch")
            rows = []
            for offset, record in enumerate(records):
                seq = next_seq + offset
                envelope = {
                    "schema": SCHEMA_VERSION,
                    "kind": record.kind,
                    "site": self.site,
                    "gateway": self.gateway,
                    "epoch": epoch,
                    "seq": seq,
                    "created": utc(record.created),
                    **record.body,
                }
                payload = json.dumps(envelope, separators=(",", ":"), allow_nan=False).encode()
                rows.append(
                    (seq, int(record.priority), record.kind, payload, record.created, len(payload))
                )
            conn.executemany(
                "INSERT INTO outbox(seq, priority, kind, payload, created, size) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.execute(
                "UPDATE meta SET value = ? WHERE key = 'next_seq'", (str(next_seq + len(rows)),)
            )
            conn.executemany(
                "INSERT INTO archive(seq, kind, created, payload) VALUES (?, ?, ?, ?)",
                [(row[0], row[2], row[4], row[3]) for row in rows if row[2] in ARCHIVED],
            )
            if meta:
                conn.executemany(
                    "INSERT INTO meta(key, value) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    list(meta.items()),
                )
            if totals:
                now = time.time()
                conn.executemany(
                    "INSERT INTO totals(stream, state, updated) VALUES (?, ?, ?) "
                    "ON CONFLICT(stream) DO UPDATE SET state = excluded.state, "
                    "updated = excluded.updated",
                    [(name, json.dumps(state), now) for name, state in totals.items()],
                )
            added = sum(row[5] for row in rows)
            evicted = self._evict(self._bytes + added)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._bytes += added - evicted
        return [row[0] for row in rows]

    def take(self, n: int, *, exclude: Iterable[int] = ()) -> list[Message]:
        """The next `n` messages to send: highest priority first, oldest first within one."""
        skip = set(exclude)
        rows = self.conn.execute(
            "SELECT seq, priority, kind, payload FROM outbox ORDER BY priority DESC, seq LIMIT ?",
            (n + len(skip),),
        ).fetchall()
        return [
            Message(seq, priority, topic(self.topic_prefix, self.site, self.gateway, kind), payload)
            for seq, priority, kind, payload in rows
            if seq not in skip
        ][:n]

    def ack(self, seqs: Iterable[int]) -> None:
        """Delete records the broker has acknowledged."""
        seqs = list(seqs)
        if not seqs:
            return
        freed = 0
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for seq in seqs:
                row = self.conn.execute(
                    "DELETE FROM outbox WHERE seq = ? RETURNING size", (seq,)
                ).fetchone()
                if row is not None:  # already evicted, or a duplicate PUBACK
                    freed += int(row[0])
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self._bytes -= freed

    # --- bounds and bookkeeping -----------------------------------------------------------

    def _evict(self, size: int) -> int:
        """Inside a transaction: drop lowest-priority, oldest records until under the bound.

        Returns the bytes freed.
        """
        if size <= self.max_bytes:
            return 0
        excess = size - self.max_bytes
        freed = 0
        dropped: dict[int, int] = {}
        cursor = self.conn.execute("SELECT seq, priority, size FROM outbox ORDER BY priority, seq")
        victims = []
        for seq, priority, row_size in cursor:
            if excess <= 0:
                break
            victims.append((seq,))
            dropped[priority] = dropped.get(priority, 0) + 1
            excess -= row_size
            freed += row_size
        self.conn.executemany("DELETE FROM outbox WHERE seq = ?", victims)
        for priority, count in dropped.items():
            key = f"dropped_{Priority(priority).name.lower()}"
            self.conn.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
                "SET value = CAST(value AS INTEGER) + excluded.value",
                (key, str(count)),
            )
        log.warning("outbox full (%d bytes): dropped %s", self.max_bytes, dropped)
        return freed

    def _meta(self, key: str) -> str:
        value = self.meta(key)
        assert value is not None, key  # written when the database was made
        return value

    def depth(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def size(self) -> int:
        return self._bytes

    def dropped(self) -> dict[str, int]:
        rows = self.conn.execute(
            "SELECT key, value FROM meta WHERE key LIKE 'dropped_%'"
        ).fetchall()
        return {key.removeprefix("dropped_"): int(value) for key, value in rows}

    def oldest_age(self, now: float | None = None) -> float | None:
        row = self.conn.execute("SELECT min(created) FROM outbox").fetchone()
        if row[0] is None:
            return None
        return (now if now is not None else time.time()) - float(row[0])

    def meta(self, key: str) -> str | None:
        """A value stored with `put(meta=...)`, None when never stored."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def archived(
        self, kind: str, *, since: float = -math.inf, until: float = math.inf
    ) -> list[dict[str, Any]]:
        """Archived payloads of one kind created in [since, until), oldest first."""
        rows = self.conn.execute(
            "SELECT payload FROM archive WHERE kind = ? AND created >= ? AND created < ? "
            "ORDER BY seq",
            (kind, since, until),
        )
        return [json.loads(payload) for (payload,) in rows]

    def prune_archive(self, kind: str, before: float) -> int:
        """Delete archived records of `kind` created before `before`; returns how many."""
        cursor = self.conn.execute(
            "DELETE FROM archive WHERE kind = ? AND created < ?", (kind, before)
        )
        return cursor.rowcount

    def load_totals(self) -> dict[str, dict[str, Any]]:
        return {
            stream: json.loads(state)
            for stream, state in self.conn.execute("SELECT stream, state FROM totals")
        }
