"""Store-and-forward queue in SQLite: committed before it is sent, deleted only when acked.

The same database holds the stream totals, so the totals record that reports a quantity and
the running total that contains it are committed in one transaction: a crash can neither
count a quantity twice nor lose it. It also keeps the gateway's own archive: a copy of every
hourly quantity record and configuration audit entry, kept after the broker has them (hourly
records for a retention, audit entries for good), as a flow computer keeps its logs.

Durability: WAL. A commit that holds an alarm or an audit entry, or meta values, or a new
sequence-number reservation, is synced before put returns (synchronous=FULL: the WAL
reaches the card). Every other commit rides on the next sync, which comes at most
SYNC_EVERY later (flush() makes one when nothing else does, and a checkpoint is one): that
keeps the card to about one sync a second however often the agent commits.

A record counts as stored, and is sent, only once it is synced: take() returns nothing newer
than the last sync. So a power cut costs at most the last SYNC_EVERY of commits, none of
which had left the gateway: the sequence numbers they had are issued again to new records
without a consumer ever seeing two records under one number (nor a gap). A totals or
hourly record is lost together with the running totals it was committed with, so the next
one after the restart reports its quantity again: never counted twice, never lost.

Acknowledged records are deleted in the next commit (or after ACK_HOLD, or ACK_BATCH of
them, whichever comes first), never in a sync of their own: losing a deletion to a power
cut re-sends records the broker already has (a duplicate), never loses one. Folding the
deletes into the commits that write halves what the card is written per record.

Sequence numbers: a new database starts at the wall clock in microseconds, so a gateway
whose database was lost or moved aside goes on with larger numbers than it ever used (as
long as its clock was right and it wrote under a million records a second), and its
random `epoch` changes too; consumers key records by (gateway, epoch, seq).

Disk full: the put is rolled back, the bound is lowered below what the file holds and the
lowest-priority records are evicted to make room, and the put is tried again; if the disk is
still full the records are held in memory (a bounded number, the lowest priority dropped
first, counted) and written with the next put. Nothing raises to the agent.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import secrets
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..core import clock
from ..core.records import SCHEMA_VERSION, Priority, Record, topic, utc
from . import archive, db
from .bound import (
    DISK_CHECK,
    DROP_LOG_EVERY,
    EXPIRE_EVERY,
    FULL_RETRY,
    HELD_MAX,
    ClockWatch,
    Drops,
    disk_room,
    evict,
    expire,
    load_dropped,
    persist_dropped,
)
from .db import SeqMark, damaged, disk_full, quick_check, set_aside

log = logging.getLogger(__name__)

ACK_CHUNK = 500  # sequence numbers per DELETE statement
# Payloads from this size on are stored zlib-compressed (and sent as they were made): a
# telemetry record of 1,000 moving points is ~48 kB of JSON that compresses 6.7:1 at level 6
# in ~1 ms on the build machine (5.2:1 at level 1 in 0.5 ms; 7.1:1 at level 9 in 3.9 ms).
PACK_FROM = 1024
PACK_LEVEL = 6


# One encoder for every record: json.dumps with options builds a new one per call.
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def first_seq() -> int:
    """A new database's first sequence number: the wall clock in microseconds."""
    return int(time.time() * 1_000_000)


@dataclass(frozen=True, slots=True)
class Message:
    seq: int
    priority: int
    topic: str
    payload: bytes


SEQ_BLOCK = 10_000  # sequence numbers reserved at once: one fsync of the mark per block
SYNC_EVERY = 1.0  # s: unsynced commits reach the disk at most this much later
WAL_CHECKPOINT = 4 * 1024 * 1024  # bytes of WAL that are copied back into the database
ACK_HOLD = 1.0  # s an acknowledged record waits for a commit to delete it in ...
ACK_BATCH = 2000  # ... or fewer, when this many are waiting
T = TypeVar("T")


# The oldest record: one index lookup per priority (outbox_evict, the first of its range),
# not a scan of the backlog; the status reads it every second, during an outage too. The
# first record made counts, whatever its time stamp says after the wall clock stepped back.
OLDEST = (
    "SELECT min(oldest) FROM ("
    + " UNION ALL ".join(
        f"SELECT (SELECT created FROM outbox WHERE priority = {int(p)} ORDER BY seq LIMIT 1)"
        " AS oldest"
        for p in Priority
    )
    + ")"
)


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
        max_age: dict[str, float] | None = None,
    ) -> None:
        self.path = str(path)
        self.max_bytes = max_bytes
        self.site = site
        self.gateway = gateway
        self.topic_prefix = topic_prefix
        self.max_age = {Priority[k.upper()]: v for k, v in (max_age or {}).items()}
        self.moved_aside: str | None = None  # where an unreadable database was put
        self.moved_aside_reason: str | None = None
        # What the last reset of the database left behind, for the outbox_reset alarm: its
        # cause (unreadable, damaged, rolled_back), the old epoch, its last seq, how many
        # records were not sent (None where the old file could not tell).
        self.reset: dict[str, Any] | None = None
        self.on_reset: Callable[[], None] | None = None  # a reset while running: say so
        self._created = False  # the database was made by this open
        self._reserved = 0  # sequence numbers up to here may have been issued (the mark)
        self._reserved_db = 0  # ... as the database itself last recorded it
        self._topics: dict[str, str] = {}
        self._mark = SeqMark(self.path) if self.path != ":memory:" else None
        self.syncs = 0  # disk syncs asked for: synced commits, and two per sequence mark
        # Records with seq <= durable are on the disk; newer ones wait for the next sync.
        self.durable = 0
        self.on_durable: Callable[[int], None] | None = None  # new durable records, by priority
        self._synced_at = -math.inf  # monotonic time of the last synced commit
        # The highest priority of the records committed since then (-1: running totals only),
        # None when every commit is synced.
        self._unsynced: int | None = None
        self._acked: dict[int, None] = {}  # acknowledged, to delete with the next commit
        self._acked_at = math.inf  # monotonic time of the oldest of them
        self.evictions = 0  # goes up whenever records are dropped, so readers re-take
        self._last_seq = 0  # kept by _refresh() after every commit
        self._oldest: float | None = None
        self.conn = self._open()
        self._limit = max_bytes  # lowered when the disk has less room than the bound
        self._full_at = -math.inf  # monotonic time of the last disk-full error
        self._clock = ClockWatch()
        self._disk_at = -math.inf
        self._held_logged_at = -math.inf
        self._held: list[Record] = []
        self._held_totals: dict[str, Any] = {}
        self._held_meta: dict[str, str] = {}
        self._expired_at = -math.inf

    # --- set-up ---------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        """Open the database, proven readable; a damaged one is quarantined, never a crash.

        Everything a start reads is read here, under one guard: a damaged page behind the
        totals or the outbox table would otherwise end every start (a restart loop under
        systemd) although `SELECT count(*)`, answered from an index, passes.
        """
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = self._connect()
            try:
                self._probe(conn)
                self._load_state(conn)
            except BaseException:
                conn.close()
                raise
        except sqlite3.DatabaseError as exc:
            if self.path == ":memory:":
                raise
            self._set_aside(exc, cause="unreadable")
            conn = self._connect()
            self._load_state(conn)
        return conn

    def _probe(self, conn: sqlite3.Connection) -> None:
        quick_check(conn, self.path)
        conn.execute("SELECT stream, state FROM totals").fetchall()
        conn.execute("SELECT key, value FROM meta").fetchall()

    def _load_state(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.epoch = self._meta("epoch")
        # Kept in memory so that a put does not scan a million-record backlog to learn its size.
        size, count = conn.execute("SELECT coalesce(sum(size), 0), count(*) FROM outbox").fetchone()
        self._bytes, self._count = int(size), int(count)
        self._drops = Drops(load_dropped(conn))
        self._reserved = self._reserved_db = int(self.meta("reserved") or 0)
        self._check_mark()
        self._acked.clear()
        self._acked_at = math.inf
        self._unsynced = None
        if self.path != ":memory:":
            # What the file holds may have been committed without a sync by an agent that was
            # killed (it is in the page cache, not on the card): synced now, before any of it
            # is sent. A checkpoint syncs the WAL, then the database file.
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self.syncs += 2
        self._refresh()
        self.durable = self._last_seq

    # --- sequence numbers never go backwards ----------------------------------------------

    def _check_mark(self) -> None:
        """A database older than the numbers already issued starts a new epoch.

        The mark file beside the database holds the epoch and the highest sequence number
        reserved (in blocks, one fsync per block). A database restored from a backup or a VM
        snapshot, or one that lost writes it had reported done, has not recorded the last
        reservation: its next numbers may have been published with other records, and a
        consumer that de-duplicates by (epoch, seq) would throw the new ones away.
        """
        mark = self._mark.read() if self._mark is not None else None
        if mark is None or self._created:
            return
        epoch, reserved = mark
        if epoch == self.epoch and self._reserved_db >= reserved:
            return
        next_seq = int(self._meta("next_seq"))
        old_epoch, old_last = self.epoch, next_seq - 1
        self.epoch = secrets.token_hex(8)
        start = max(next_seq, reserved + 1)
        with self._transaction():
            self.conn.execute("UPDATE meta SET value = ? WHERE key = 'epoch'", (self.epoch,))
            self.conn.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (str(start),))
        self.reset = {
            "cause": "rolled_back",
            "old_epoch": old_epoch,
            "old_last_seq": old_last,
            "issued_up_to": reserved if epoch == old_epoch else None,
            "unsent": self._count,
        }
        log.error(
            "outbox %s is older than the sequence numbers already issued (epoch %s up to %d, "
            "the file says %d): a restored backup or lost writes. New records take epoch %s "
            "from seq %d; the file's %d unsent records go out as they were made (a consumer "
            "may have them already: duplicates, never two records under one number)",
            self.path,
            old_epoch,
            reserved,
            old_last,
            self.epoch,
            start,
            self._count,
        )

    def _reserve(self, end: int) -> None:
        """Record, durably and before they are used, that numbers below `end` may be issued."""
        if end <= self._reserved:
            return
        reserved = end + SEQ_BLOCK
        if self._mark is not None:
            try:
                self._mark.write(self.epoch, reserved)
                self.syncs += 2  # the file and its directory
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    # As a full disk for SQLite: the records are held until there is room.
                    raise sqlite3.OperationalError(
                        "database or disk is full (sequence mark)"
                    ) from exc
                log.warning(
                    "outbox: cannot write the sequence mark %s (%s): a restored backup of the "
                    "database would not be noticed",
                    self._mark.path,
                    exc.strerror or exc,
                )
        self._reserved = reserved

    # --- damage found while running --------------------------------------------------------

    def _set_aside(self, exc: BaseException, *, cause: str) -> None:
        """Move the database (and its WAL) aside, noting what can still be read of it."""
        self.moved_aside, old = set_aside(self.path, exc, cause=cause)
        self.moved_aside_reason = str(exc)
        self.reset = {"cause": cause, **old}

    def _quarantine(self, exc: sqlite3.DatabaseError) -> None:
        """The file turned out damaged while running: a new database, and the agent goes on."""
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()
        self._set_aside(exc, cause="damaged")
        self._load_state(self._connect())
        self.evictions += 1  # whatever readers took from the old file is gone
        if self.on_reset is not None:
            self.on_reset()

    def _guarded(self, action: Callable[[], T]) -> T:
        """Run `action`; if SQLite says the file is damaged, quarantine it and run it again."""
        try:
            return action()
        except sqlite3.DatabaseError as exc:
            if self.path == ":memory:" or not damaged(exc):
                raise
            self._quarantine(exc)
            return action()

    def _connect(self) -> sqlite3.Connection:
        conn = db.connect(self.path)
        try:
            # The outbox checkpoints itself (see _checkpoint), so that its syncs are counted;
            # a WAL emptied by a checkpoint is truncated when it restarts, so its size on
            # disk says how much waits to be checkpointed.
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute("PRAGMA journal_size_limit=0")
            # Debian's SQLite is built with SECURE_DELETE: every page a deletion frees would be
            # zeroed, and so written to the WAL again, which doubled what a record cost the card.
            # FAST zeroes freed content only where the page is written anyway.
            conn.execute("PRAGMA secure_delete=FAST")
            conn.execute("BEGIN IMMEDIATE")
            start = str(first_seq())
            made = conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) "
                "VALUES ('epoch', ?), ('next_seq', ?), ('first_seq', ?)",
                (secrets.token_hex(8), start, start),
            )
            self._created = made.rowcount > 0
            conn.execute("COMMIT")
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def _transaction(self, *, synced: bool = True) -> Iterator[None]:
        """One transaction; `synced` commits with a sync of the WAL (synchronous=FULL), which
        makes every commit before it durable as well. Unsynced commits reach the disk with
        the next sync, which flush() brings within SYNC_EVERY."""
        conn = self.conn
        if not synced:
            conn.execute("PRAGMA synchronous=NORMAL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back itself
                    conn.execute("ROLLBACK")
                raise
        finally:
            if not synced:
                conn.execute("PRAGMA synchronous=FULL")
        self._refresh()
        if synced:
            self.syncs += 1
            self._synced_at = time.monotonic()
            self._durable_now()
        self._checkpoint()

    def _refresh(self) -> None:
        """After a commit: what status and health read every second, kept in memory so that
        reading it touches no SQLite (the connection is the writer thread's)."""
        self._last_seq = int(self._meta("next_seq")) - 1
        oldest = self.conn.execute(OLDEST).fetchone()[0]
        self._oldest = None if oldest is None else float(oldest)

    def _checkpoint(self) -> None:
        """Copy the WAL back into the database once it holds WAL_CHECKPOINT bytes, as SQLite's
        own automatic checkpoint would (which this replaces, to count its two syncs)."""
        if self.path == ":memory:":
            return
        try:
            size = os.stat(self.path + "-wal").st_size
        except OSError:
            return
        if size >= WAL_CHECKPOINT:
            # PASSIVE: never waits for a reader (massgate report); what it could not copy
            # is copied by a later one.
            _, _, copied = self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.syncs += 2  # the WAL before, the database file after
            if copied > 0:
                # The WAL was synced before it was copied: every commit is durable, and this
                # stands for the next timed sync.
                self._synced_at = time.monotonic()
                self._durable_now()

    def _durable_now(self) -> None:
        """After a sync: everything committed so far is on the disk, and may be sent."""
        last = self._last_seq
        priority, self._unsynced = self._unsynced, None
        if last > self.durable:
            self.durable = last
            if self.on_durable is not None:
                self.on_durable(int(max(Priority)) if priority is None else priority)

    def _delete_acked(self) -> tuple[int, int]:
        """Inside a transaction: delete what was acknowledged; returns (bytes, records)."""
        freed = deleted = 0
        seqs = list(self._acked)
        for start in range(0, len(seqs), ACK_CHUNK):
            chunk = seqs[start : start + ACK_CHUNK]
            marks = ",".join("?" * len(chunk))
            # Some may be gone already: evicted, or a duplicate PUBACK.
            sizes = self.conn.execute(
                f"DELETE FROM outbox WHERE seq IN ({marks}) RETURNING size", chunk
            ).fetchall()
            freed += sum(size for (size,) in sizes)
            deleted += len(sizes)
        return freed, deleted

    def _deleted(self, freed: int, deleted: int) -> None:
        """After the commit that deleted the acknowledged records."""
        self._bytes -= freed
        self._count -= deleted
        self._acked.clear()
        self._acked_at = math.inf

    def close(self) -> None:
        if self._held or self._held_totals or self._held_meta:
            with contextlib.suppress(sqlite3.Error):
                self._put_or_hold([], None, None, force=True)
            if self._held:
                log.error(
                    "outbox: %d records could not be written (disk full) and are lost at exit",
                    len(self._held),
                )
        with contextlib.suppress(sqlite3.Error):
            self.sync()  # a clean stop leaves nothing to re-send and nothing unsynced
        self.conn.close()

    # --- the contract ---------------------------------------------------------------------

    def put(
        self,
        records: Sequence[Record],
        *,
        totals: dict[str, Any] | None = None,
        meta: dict[str, str] | None = None,
        sync: bool = False,
    ) -> list[int]:
        """Commit records (and stream totals, and meta values) in one transaction.

        The commit is synced when `sync` is set, or when what it holds asks for it (see the
        module's note); otherwise it rides on the next sync.

        Returns the records' sequence numbers (of records held from an earlier put that
        failed for a full disk as well). Records of an archived kind are also copied to the
        archive, where they stay after the broker has acknowledged them. When the disk is
        full and no room can be made, the records are held and [] is returned.
        """
        return self._guarded(
            lambda: self._put_or_hold(records, totals, meta, force=False, sync=sync)
        )

    def _put_or_hold(
        self,
        records: Sequence[Record],
        totals: dict[str, Any] | None,
        meta: dict[str, str] | None,
        *,
        force: bool,
        sync: bool = False,
    ) -> list[int]:
        held = bool(self._held or self._held_totals or self._held_meta)
        if held:
            records = [*self._held, *records]
            totals = {**self._held_totals, **(totals or {})}
            meta = {**self._held_meta, **(meta or {})}
            self._held, self._held_totals, self._held_meta = [], {}, {}
        if not records and not totals and not meta:
            return []
        mono = time.monotonic()
        if held and not force and mono - self._full_at < FULL_RETRY:
            self._hold(records, totals, meta)  # the disk was full a moment ago
            return []
        self._limit = self._room(mono)
        now = time.time()
        self._clock.look(now, mono)
        if self.max_age and now - self._expired_at >= EXPIRE_EVERY:
            self._expired_at = now
            self._expire(now)
        for attempt in (1, 2):
            try:
                seqs = self._put(records, totals, meta, sync=sync)
            except sqlite3.OperationalError as exc:
                if not disk_full(exc):
                    raise
                self._full_at = time.monotonic()
                if attempt == 1:
                    self._make_room()
                continue
            if held:
                log.warning("outbox: the disk has room again; %d held records written", len(seqs))
            return seqs
        self._hold(records, totals, meta)
        return []

    def _room(self, mono: float, *, now: bool = False) -> int:
        """The bound, lowered when the disk holds less than it: eviction by priority then
        makes room before SQLite finds the disk full, and the bound follows the disk back up.
        """
        if self.path == ":memory:":
            return self.max_bytes
        if not now and mono - self._disk_at < DISK_CHECK:
            return self._limit
        self._disk_at = mono
        room = disk_room(self.path, self._bytes)
        if room is None:
            return self._limit
        # With no room to grow the outbox keeps its size: each put evicts what it adds.
        limit = min(self.max_bytes, max(room, self._bytes))
        if limit < self.max_bytes and self._limit == self.max_bytes:
            log.warning(
                "outbox: the disk has room for about %d bytes of records, less than "
                "outbox.max_size (%d): the lowest-priority records make room",
                limit,
                self.max_bytes,
            )
        elif limit == self.max_bytes and self._limit < self.max_bytes:
            log.info("outbox: the disk has room for outbox.max_size again")
        return limit

    def _put(
        self,
        records: Sequence[Record],
        totals: dict[str, Any] | None,
        meta: dict[str, str] | None,
        *,
        sync: bool,
    ) -> list[int]:
        conn = self.conn
        next_seq = self._last_seq + 1  # kept by _refresh() after every commit
        top = max((int(r.priority) for r in records), default=-1)  # -1: running totals only
        sync = (
            sync
            or top >= Priority.ALARM
            or bool(meta)
            or next_seq + len(records) > self._reserved  # the reservation must not be lost
            or time.monotonic() - self._synced_at >= SYNC_EVERY
            or self.path == ":memory:"  # nothing to sync: every commit counts as durable
        )
        with self._transaction(synced=sync):
            freed, deleted = self._delete_acked()  # they ride on this commit
            # One look at the clock per commit: the records of a cycle share it.
            synced = clock.synced()
            rows = []
            flags: list[bool] = []
            archived: list[tuple[int, str, float, bytes]] = []
            for offset, record in enumerate(records):
                seq = next_seq + offset
                envelope = {
                    "schema": SCHEMA_VERSION,
                    "kind": record.kind,
                    "site": self.site,
                    "gateway": self.gateway,
                    "epoch": self.epoch,
                    "seq": seq,
                    "created": utc(record.created),
                    "clock_synced": synced,
                    **record.body,
                }
                payload = _encode(envelope).encode()
                packed = len(payload) >= PACK_FROM
                stored = zlib.compress(payload, PACK_LEVEL) if packed else payload
                rows.append(
                    (seq, int(record.priority), record.kind, stored, record.created, len(stored))
                )
                archived.append((seq, record.kind, record.created, payload))  # as made
                flags.append(packed)
            conn.executemany(
                "INSERT INTO outbox(seq, priority, kind, payload, created, size, packed) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(*row, packed) for row, packed in zip(rows, flags, strict=True)],
            )
            conn.execute(
                "UPDATE meta SET value = ? WHERE key = 'next_seq'", (str(next_seq + len(rows)),)
            )
            # The mark file first (synced), then the database records the reservation in
            # this same transaction; a database that lacks it is older than the mark.
            self._reserve(next_seq + len(rows))
            if self._reserved_db != self._reserved:
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES ('reserved', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (str(self._reserved),),
                )
            archive.copy(conn, archived)
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
            evicted, dropped = evict(conn, self._bytes - freed + added, self._limit)
            # What the commit adds to the next sync (this one's, if it syncs).
            self._unsynced = max(top, -1 if self._unsynced is None else self._unsynced)
        self._deleted(freed, deleted)
        self._reserved_db = self._reserved
        self._bytes += added - evicted
        self._count += len(rows) - sum(dropped.values())
        self._count_dropped(dropped)
        return [row[0] for row in rows]

    def _make_room(self) -> None:
        """The disk is full: evict below what the file now holds and give the space back."""
        self._limit = min(self._room(time.monotonic(), now=True), int(self._bytes * 0.9))
        log.error(
            "outbox: the disk is full; the lowest-priority records make room (bound %d bytes)",
            self._limit,
        )
        try:
            with self._transaction():
                freed, dropped = evict(self.conn, self._bytes, self._limit)
            self._bytes -= freed
            self._count -= sum(dropped.values())
            self._count_dropped(dropped)
            # The pages freed are in the WAL until a checkpoint writes them back.
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError as exc:
            if not disk_full(exc):
                raise
            log.error("outbox: the disk is too full even to evict: %s", exc)

    def _hold(
        self,
        records: Sequence[Record],
        totals: dict[str, Any] | None,
        meta: dict[str, str] | None,
    ) -> None:
        held = list(records)
        if len(held) > HELD_MAX:
            # Lowest priority, oldest first, as the outbox itself drops.
            order = sorted(range(len(held)), key=lambda i: (held[i].priority, i))
            lost = set(order[: len(held) - HELD_MAX])
            dropped: dict[int, int] = {}
            for i in lost:
                dropped[int(held[i].priority)] = dropped.get(int(held[i].priority), 0) + 1
            held = [r for i, r in enumerate(held) if i not in lost]
            self._count_dropped(dropped, persist=True, why="disk full, held in memory")
        self._held, self._held_totals, self._held_meta = held, totals or {}, meta or {}
        if time.monotonic() - self._held_logged_at >= DROP_LOG_EVERY:
            self._held_logged_at = time.monotonic()
            log.error(
                "outbox: the disk is full; %d records are held in memory until there is room",
                len(held),
            )

    def take(
        self, n: int, *, exclude: Iterable[int] = (), after: tuple[int, int] | None = None
    ) -> list[Message]:
        """The next `n` messages to send: highest priority first, oldest first within one.

        `after` (priority, seq) continues from the last message taken, without reading
        again what was taken before it.
        """
        exclude = list(exclude)
        return self._guarded(lambda: self._take(n, exclude=exclude, after=after))

    def _take(
        self, n: int, *, exclude: Iterable[int], after: tuple[int, int] | None
    ) -> list[Message]:
        skip = set(exclude) | self._acked.keys()
        # One range of outbox_evict per priority, highest first; records before the key were
        # taken already, and some after it may be too (in flight, or acknowledged and not yet
        # deleted): they are stepped over a read at a time, not all read first.
        top, last = after if after is not None else (int(max(Priority)), -1)
        kept: list[tuple[int, int, str, bytes, int]] = []
        for priority in range(top, -1, -1):
            seq = last if priority == top else -1
            while len(kept) < n:
                rows = self.conn.execute(
                    "SELECT seq, priority, kind, payload, packed FROM outbox "
                    "WHERE priority = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                    (priority, seq, self.durable, n),
                ).fetchall()
                kept += [row for row in rows if row[0] not in skip]
                if len(rows) < n:
                    break
                seq = rows[-1][0]
            if len(kept) >= n:
                break
        return [
            Message(
                seq, priority, self._topic(kind), zlib.decompress(payload) if packed else payload
            )
            for seq, priority, kind, payload, packed in kept[:n]
        ]

    def _topic(self, kind: str) -> str:
        found = self._topics.get(kind)
        if found is None:
            found = self._topics[kind] = topic(self.topic_prefix, self.site, self.gateway, kind)
        return found

    def ack(self, seqs: Iterable[int]) -> None:
        """Records the broker has acknowledged: deleted with the next commit (see the
        module's note), within ACK_HOLD, and never sent again meanwhile."""
        if not self._acked:
            self._acked_at = time.monotonic()
        self._acked.update(dict.fromkeys(seqs))
        if len(self._acked) >= ACK_BATCH:
            self.flush()

    def flush(self) -> float:
        """Commit what waits once it is due: acknowledged deletions (after ACK_HOLD, or
        ACK_BATCH of them) and the sync of unsynced commits (SYNC_EVERY after the last).
        Returns the seconds until something will be due (inf when nothing waits). A disk
        too full to record a deletion keeps it waiting; nothing raises for that.
        """
        now = time.monotonic()
        if now - self._full_at < FULL_RETRY:
            return FULL_RETRY - (now - self._full_at)  # the disk was full a moment ago
        sync_at = self._synced_at + SYNC_EVERY if self._unsynced is not None else math.inf
        acks_at = self._acked_at + ACK_HOLD if len(self._acked) < ACK_BATCH else now
        if now >= min(sync_at, acks_at):
            try:
                self._guarded(lambda: self._commit_waiting(sync=now >= sync_at))
            except sqlite3.OperationalError as exc:
                if not disk_full(exc):
                    raise
                self._full_at = time.monotonic()
                if time.monotonic() - self._held_logged_at >= DROP_LOG_EVERY:
                    self._held_logged_at = time.monotonic()
                    log.error("outbox: the disk is full; acknowledged records are deleted later")
                return FULL_RETRY
            now = time.monotonic()
            sync_at = self._synced_at + SYNC_EVERY if self._unsynced is not None else math.inf
            acks_at = self._acked_at + ACK_HOLD
        return max(min(sync_at, acks_at) - now, 0.0)

    def sync(self) -> None:
        """Make every commit durable now (and delete what was acknowledged): for a stop, and
        for whoever must see every record sendable at once."""
        if self._acked or self._unsynced is not None:
            self._guarded(lambda: self._commit_waiting(sync=True))

    def _commit_waiting(self, *, sync: bool) -> None:
        if sync and not self._acked and self.path != ":memory:":
            self._sync_wal()
            return
        with self._transaction(synced=sync):
            freed, deleted = self._delete_acked()
        self._deleted(freed, deleted)

    def _sync_wal(self) -> None:
        """A sync with nothing to commit: the WAL file itself. Its frames are the commits not
        yet synced (SQLite appends them in order, each commit marked in its last frame), so
        once the file is on the card they survive a power cut as a synced commit would.
        Cheaper than a commit written to get SQLite's sync: no frame, no page."""
        try:
            fd = os.open(self.path + "-wal", os.O_RDONLY)
        except FileNotFoundError:
            fd = None  # nothing written since the last checkpoint emptied it
        if fd is not None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.syncs += 1
        self._synced_at = time.monotonic()
        self._durable_now()

    def acked_waiting(self) -> int:
        """Acknowledged records not yet deleted."""
        return len(self._acked)

    # --- bounds and bookkeeping -----------------------------------------------------------

    def _expire(self, now: float) -> None:
        """Drop records older than their priority's maximum age (counted as dropped)."""
        with self._transaction():
            freed, dropped = expire(self.conn, self.max_age, now, self._clock.stepped_at)
        self._bytes -= freed
        self._count -= sum(dropped.values())
        if dropped:
            self._count_dropped(dropped, persist=False, why="older than outbox.max_age")

    def _count_dropped(
        self, dropped: dict[int, int], *, persist: bool = False, why: str = "outbox full"
    ) -> None:
        """After the transaction that dropped records: the in-memory counts and the log."""
        if not dropped:
            return
        self.evictions += 1
        if persist:
            with contextlib.suppress(sqlite3.Error), self._transaction():
                persist_dropped(self.conn, dropped)
        self._drops.add(dropped, why=why, limit=self._limit)

    def _meta(self, key: str) -> str:
        value = self.meta(key)
        assert value is not None, key  # written when the database was made
        return value

    def depth(self) -> int:
        """Records waiting to be sent (acknowledged ones are gone, if not yet deleted)."""
        return max(self._count - len(self._acked), 0)

    def size(self) -> int:
        return self._bytes

    def held(self) -> int:
        """Records kept in memory while the disk is full (not in depth() until written)."""
        return len(self._held)

    def dropped(self) -> dict[str, int]:
        """Records dropped since the database was made, by priority name."""
        return dict(self._drops.counts)

    def last_seq(self) -> int:
        """The sequence number of the newest record put (one less than the first if none)."""
        return self._last_seq

    def oldest_age(self, now: float | None = None) -> float | None:
        """How old the oldest record waiting is (by the first made of each priority)."""
        if self._oldest is None:
            return None
        return (now if now is not None else time.time()) - self._oldest

    def meta(self, key: str) -> str | None:
        """A value stored with `put(meta=...)`, None when never stored."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def archived(
        self, kind: str, *, since: float = -math.inf, until: float = math.inf
    ) -> list[dict[str, Any]]:
        """Archived payloads of one kind created in [since, until), oldest first."""
        return self._guarded(lambda: archive.read(self.conn, kind, since=since, until=until))

    def prune_archive(self, kind: str, before: float) -> int:
        """Delete archived records of `kind` created before `before`; returns how many."""
        return self._guarded(lambda: archive.prune(self.conn, kind, before))

    def load_totals(self) -> dict[str, dict[str, Any]]:
        return self._guarded(
            lambda: {
                stream: json.loads(state)
                for stream, state in self.conn.execute("SELECT stream, state FROM totals")
            }
        )
