"""The state database's schema: numbered migrations, files of earlier releases kept as they
are, a file of a newer release refused with a message rather than taken for damage."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from massgate.agent.core.records import Record
from massgate.agent.store import db
from massgate.agent.store.outbox import Outbox

# What the releases before migrations made (with sqlite-utils), copied from such a file.
FIRST_RELEASE = (
    'CREATE TABLE "outbox" (\n   "seq" INTEGER PRIMARY KEY,\n   "priority" INTEGER NOT NULL,'
    '\n   "kind" TEXT NOT NULL,\n   "payload" BLOB NOT NULL,\n   "created" REAL NOT NULL,\n'
    '   "size" INTEGER NOT NULL\n)',
    'CREATE INDEX "outbox_evict"\n    ON "outbox" ("priority", "seq")',
    'CREATE INDEX "outbox_send"\n    ON "outbox" ("priority" desc, "seq")',
    'CREATE INDEX "outbox_age"\n    ON "outbox" ("priority", "created")',
    'CREATE TABLE "meta" (\n   "key" TEXT PRIMARY KEY,\n   "value" TEXT\n)',
    'CREATE TABLE "totals" (\n   "stream" TEXT PRIMARY KEY,\n   "state" TEXT,\n'
    '   "updated" REAL\n)',
    'CREATE TABLE "archive" (\n   "seq" INTEGER PRIMARY KEY,\n   "kind" TEXT NOT NULL,\n'
    '   "created" REAL NOT NULL,\n   "payload" BLOB NOT NULL\n)',
    'CREATE INDEX "archive_kind"\n    ON "archive" ("kind", "created")',
)


def _open(path: Path) -> Outbox:
    return Outbox(path, max_bytes=10**9, site="s", gateway="g")


def test_a_new_file_has_every_migration(tmp_path: Path):
    box = _open(tmp_path / "state.sqlite")
    assert box.conn.execute("PRAGMA user_version").fetchone()[0] == len(db.MIGRATIONS)
    assert box.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    box.close()


def test_a_file_of_the_first_release_keeps_its_records(tmp_path: Path):
    path = tmp_path / "state.sqlite"
    old = sqlite3.connect(path)
    for statement in FIRST_RELEASE:
        old.execute(statement)
    old.execute(
        "INSERT INTO meta VALUES ('epoch', 'e0'), ('next_seq', '101'), ('first_seq', '100')"
    )
    old.execute("INSERT INTO outbox VALUES (100, 1, 'totals', x'7b7d', 1.0, 2)")
    old.commit()
    old.close()
    box = _open(path)
    assert box.conn.execute("PRAGMA user_version").fetchone()[0] == len(db.MIGRATIONS)
    assert box.epoch == "e0"
    assert box.reset is None, "an old file is not damage"
    assert [m.seq for m in box.take(10)] == [100]
    box.put([Record("totals", {"i": 1}, 2.0)])
    assert [m.seq for m in box.take(10)] == [100, 101]
    box.close()


def test_a_file_of_a_newer_release_is_refused_not_moved_aside(tmp_path: Path):
    path = tmp_path / "state.sqlite"
    _open(path).close()
    newer = sqlite3.connect(path)
    newer.execute(f"PRAGMA user_version = {len(db.MIGRATIONS) + 1}")
    newer.close()
    with pytest.raises(db.NewerSchema, match="newer massgate"):
        _open(path)
    assert path.exists()
    assert not list(tmp_path.glob("*.corrupt-*")), "a newer file is not damage"
