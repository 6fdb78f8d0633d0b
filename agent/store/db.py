"""The state database: its connection, its schema by migration, and what damage looks like.

The schema is a list of migrations; `PRAGMA user_version` says how many a file has had, and
a start applies the rest in one transaction each. Migration 1 is the schema the first
releases made (with sqlite-utils): written with IF NOT EXISTS, it leaves those files as they
are and only numbers them. A file from a newer massgate (more migrations than this one
knows) is refused at start rather than written with an older idea of its tables.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PAGE_SIZE = 1024  # bytes, for a new database
QUICK_CHECK_SECONDS = 10.0  # the start-up integrity check's time budget

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: outbox, meta, totals, archive
        """CREATE TABLE IF NOT EXISTS "outbox" (
           "seq" INTEGER PRIMARY KEY,
           "priority" INTEGER NOT NULL,
           "kind" TEXT NOT NULL,
           "payload" BLOB NOT NULL,
           "created" REAL NOT NULL,
           "size" INTEGER NOT NULL)""",
        'CREATE INDEX IF NOT EXISTS "outbox_evict" ON "outbox" ("priority", "seq")',
        'CREATE INDEX IF NOT EXISTS "outbox_send" ON "outbox" ("priority" DESC, "seq")',
        'CREATE INDEX IF NOT EXISTS "outbox_age" ON "outbox" ("priority", "created")',
        'CREATE TABLE IF NOT EXISTS "meta" ("key" TEXT PRIMARY KEY, "value" TEXT)',
        """CREATE TABLE IF NOT EXISTS "totals" (
           "stream" TEXT PRIMARY KEY, "state" TEXT, "updated" REAL)""",
        """CREATE TABLE IF NOT EXISTS "archive" (
           "seq" INTEGER PRIMARY KEY,
           "kind" TEXT NOT NULL,
           "created" REAL NOT NULL,
           "payload" BLOB NOT NULL)""",
        'CREATE INDEX IF NOT EXISTS "archive_kind" ON "archive" ("kind", "created")',
    ),
    (  # 2: payloads stored zlib-compressed where that saves the SD card (see outbox.PACK_FROM)
        'ALTER TABLE "outbox" ADD COLUMN "packed" INTEGER NOT NULL DEFAULT 0',
    ),
    # 3: two indexes fewer to write at every commit and every deletion. The send order, the
    # oldest record of a priority and max-age expiry all read outbox_evict (priority, seq):
    # records of one priority are made in seq order.
    (
        'DROP INDEX IF EXISTS "outbox_send"',
        'DROP INDEX IF EXISTS "outbox_age"',
    ),
)


class NewerSchema(ValueError):
    """The file was written by a newer massgate: refused, never quarantined as damage."""


def connect(path: str) -> sqlite3.Connection:
    """Open (or make) the database, WAL with synchronous=FULL, its schema brought up to date."""
    # check_same_thread off: the running agent hands the connection to its writer thread
    # (store/writer.py), which then alone uses it; before and after, the event loop does.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        # Takes effect only in a new file (before its first table): every commit writes
        # each page it changes whole to the WAL, and a cycle's commit changes a few bytes in
        # each of several pages (the table, its indexes, meta); 1 KiB pages write a quarter
        # of what the default 4 KiB do for those. See README, "Storage wear".
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("PRAGMA synchronous=FULL")
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode=WAL")
        migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def migrate(conn: sqlite3.Connection, path: str) -> None:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > len(MIGRATIONS):
        raise NewerSchema(
            f"{path} has schema {version}, written by a newer massgate (this one knows "
            f"{len(MIGRATIONS)}); run that version, or move the file aside to start anew"
        )
    for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        if version:
            log.info("state database %s: migrated to schema %d", path, number)


def quick_check(conn: sqlite3.Connection, path: str) -> None:
    """PRAGMA quick_check, bounded in time (a 1 GB file on an SD card takes minutes): what
    it has not reached by then is checked as it is used. Raises DatabaseError on damage."""
    deadline = time.monotonic() + QUICK_CHECK_SECONDS
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        rows = conn.execute("PRAGMA quick_check(3)").fetchall()
    except sqlite3.OperationalError as exc:
        if "interrupt" not in str(exc):
            raise
        log.info(
            "outbox %s: the integrity check stopped after %g s; the rest is checked as it is read",
            path,
            QUICK_CHECK_SECONDS,
        )
        rows = [("ok",)]
    finally:
        conn.set_progress_handler(None, 0)
    if rows != [("ok",)]:
        raise sqlite3.DatabaseError(f"integrity check failed: {rows[0][0]}")


def damaged(exc: BaseException) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB: the file itself is damaged, not the request."""
    code = getattr(exc, "sqlite_errorcode", None)
    text = str(exc)
    return code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or (
        "malformed" in text or "not a database" in text or "integrity check failed" in text
    )


def disk_full(exc: BaseException) -> bool:
    """SQLITE_FULL: the disk (or the database's page limit) has no room."""
    return isinstance(exc, sqlite3.OperationalError) and (
        getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        or "database or disk is full" in str(exc)
    )


class SeqMark:
    """The file beside the database that says which sequence numbers may have been issued:
    `{"epoch": ..., "reserved": N}`, replaced atomically and synced to disk."""

    def __init__(self, database: str) -> None:
        self.path = Path(database + ".seq")

    def read(self) -> tuple[str, int] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return str(data["epoch"]), int(data["reserved"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("outbox: the sequence mark %s is unreadable (%s)", self.path, exc)
            return None

    def write(self, epoch: str, reserved: int) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump({"epoch": epoch, "reserved": reserved}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def set_aside(path: str, exc: BaseException, *, cause: str) -> tuple[str, dict[str, Any]]:
    """Move an unreadable or damaged database (and its WAL) aside; returns where to, and what
    could still be read of it: its epoch, its last sequence number, its unsent records."""
    aside = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
    old: dict[str, Any] = {"old_epoch": None, "old_last_seq": None, "unsent": None}
    with contextlib.suppress(sqlite3.Error, ValueError, TypeError):
        probe = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            with contextlib.suppress(sqlite3.Error, ValueError, TypeError):
                rows = dict(probe.execute("SELECT key, value FROM meta").fetchall())
                old["old_epoch"] = rows.get("epoch")
                old["old_last_seq"] = int(rows["next_seq"]) - 1
            with contextlib.suppress(sqlite3.Error):
                old["unsent"] = int(probe.execute("SELECT count(*) FROM outbox").fetchone()[0])
        finally:
            probe.close()
    log.error(
        "outbox %s is %s (%s); moved aside to %s and starting a new one",
        path,
        cause,
        exc,
        aside,
    )
    for suffix in ("", "-wal", "-shm"):
        src = Path(path + suffix)
        if src.exists():
            src.rename(aside + suffix)
    return aside, old
