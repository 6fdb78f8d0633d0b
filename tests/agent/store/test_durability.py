"""What reaches the card when: telemetry rides on the next sync, only synced records are
sent, acknowledged records are deleted with the next commit, large payloads are stored
compressed and sent as they were made."""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from massgate.agent.core.records import Record
from massgate.agent.store import outbox as outbox_module
from massgate.agent.store.outbox import Outbox

WALL = 1_800_000_000.0


def _open(path: Path) -> Outbox:
    return Outbox(path, max_bytes=10**9, site="s", gateway="g")


def _telemetry(i: int, points: int = 1) -> Record:
    body = {
        "points": {f"d.v{p:03d}": {"value": i + p / 7, "quality": "good"} for p in range(points)}
    }
    return Record("telemetry", body, WALL + i)


@pytest.fixture
def no_timed_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Syncs come only from what the records are, and from flush() once it is due."""
    monkeypatch.setattr(outbox_module, "SYNC_EVERY", math.inf)


def test_records_are_sent_only_after_a_sync_and_alarms_are_synced_at_once(
    tmp_path: Path, no_timed_sync: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = _open(tmp_path / "state.sqlite")
    woken: list[int] = []
    box.on_durable = woken.append
    first = box.put([_telemetry(0)])  # the first put reserves a block: synced
    assert [m.seq for m in box.take(10)] == first
    syncs = box.syncs
    later = box.put([_telemetry(1)]) + box.put([Record("totals", {"i": 2}, WALL + 2)])
    assert box.syncs == syncs, "telemetry and totals ride on the next sync"
    assert [m.seq for m in box.take(10)] == first, "not durable, not sent"
    assert box.flush() == math.inf or box.syncs == syncs  # not due while SYNC_EVERY is inf
    assert [m.seq for m in box.take(10)] == first
    alarm = box.put([Record("alarm", {"i": 3}, WALL + 3)])
    assert box.syncs == syncs + 1, "an alarm is synced before put returns"
    assert [m.seq for m in box.take(10)] == [*alarm, later[1], *first, later[0]]
    assert woken[-1] == 3  # the publisher is woken for an alarm
    more = box.put([_telemetry(4)])
    monkeypatch.setattr(outbox_module, "SYNC_EVERY", 0.0)
    wal = os.stat(tmp_path / "state.sqlite-wal").st_size
    box.flush()  # due now: a sync with nothing else to write, of the WAL file itself
    assert os.stat(tmp_path / "state.sqlite-wal").st_size == wal, "no commit written for it"
    assert box.syncs == syncs + 2
    assert [m.seq for m in box.take(10)][-1] == more[0]
    assert woken[-1] == 0
    first_values = box.put([_telemetry(5)], sync=True)  # the agent's first telemetry
    assert box.syncs == syncs + 3
    assert [m.seq for m in box.take(10)][-1] == first_values[0]
    box.close()


def test_a_power_cut_costs_unsent_telemetry_and_no_sent_number_is_reused(
    tmp_path: Path, no_timed_sync: None
) -> None:
    path = tmp_path / "state.sqlite"
    box = _open(path)
    box.put([_telemetry(0), Record("totals", {"i": 0}, WALL)])
    synced_wal = (path.parent / "state.sqlite-wal").read_bytes()  # what is on the card
    lost = box.put([_telemetry(1)]) + box.put([_telemetry(2)], totals={"feed": {"kg": 2.0}})
    sent = {(box.epoch, m.seq): m.payload for m in box.take(100)}
    assert not set(lost) & {seq for _, seq in sent}
    # The power goes: the card has the database and the WAL as of the last sync.
    cut = tmp_path / "after"
    cut.mkdir()
    shutil.copy(path, cut / "state.sqlite")
    (cut / "state.sqlite-wal").write_bytes(synced_wal)
    shutil.copy(f"{path}.seq", cut / "state.sqlite.seq")
    box.close()
    after = _open(cut / "state.sqlite")
    assert after.reset is None, "a power cut is not a restored backup"
    fresh = after.put([Record("alarm", {"i": 9}, WALL + 9)])
    assert fresh == lost[:1], "the unsent numbers are issued again"
    for m in after.take(100):
        assert sent.get((after.epoch, m.seq), m.payload) == m.payload, "one number, one record"
    assert after.load_totals() == {}, "the unsynced running totals are lost with the telemetry"
    after.close()


def test_acknowledged_records_are_deleted_in_the_next_commit(tmp_path: Path) -> None:
    box = _open(tmp_path / "state.sqlite")
    seqs = box.put([Record("totals", {"i": i}, WALL + i) for i in range(10)])
    commits = box.conn.total_changes
    box.ack(seqs[:4])
    assert box.conn.total_changes == commits, "no transaction of its own"
    assert box.depth() == 6
    assert [m.seq for m in box.take(100)] == seqs[4:]
    box.put([Record("totals", {"i": 10}, WALL + 10)])
    rows = {seq for (seq,) in box.conn.execute("SELECT seq FROM outbox")}
    assert rows.isdisjoint(seqs[:4])
    assert box.acked_waiting() == 0
    box.close()


def test_acknowledged_records_wait_at_most_ack_hold_or_ack_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = _open(tmp_path / "state.sqlite")
    seqs = box.put([Record("totals", {"i": i}, WALL + i) for i in range(30)])
    monkeypatch.setattr(outbox_module, "ACK_BATCH", 10)
    box.ack(seqs[:9])
    assert box.acked_waiting() == 9
    box.ack(seqs[9:10])  # the tenth: deleted now
    assert box.acked_waiting() == 0
    assert box.depth() == 20
    monkeypatch.setattr(outbox_module, "ACK_HOLD", 0.0)
    box.ack(seqs[10:12])
    box.flush()
    assert box.acked_waiting() == 0
    assert box.conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 18
    box.close()


def test_a_clean_close_deletes_what_was_acknowledged_and_syncs(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    box = _open(path)
    seqs = box.put([Record("totals", {"i": i}, WALL + i) for i in range(5)])
    box.put([_telemetry(1)])
    box.ack(seqs)
    box.close()
    again = _open(path)
    assert [json.loads(m.payload)["kind"] for m in again.take(10)] == ["telemetry"]
    again.close()


def test_large_payloads_are_stored_compressed_and_sent_as_made(tmp_path: Path) -> None:
    box = _open(tmp_path / "state.sqlite")
    small, large = box.put([_telemetry(0), _telemetry(1, points=1000)])
    stored = dict(box.conn.execute("SELECT seq, packed FROM outbox").fetchall())
    assert stored == {small: 0, large: 1}
    (size,) = box.conn.execute("SELECT size FROM outbox WHERE seq = ?", (large,)).fetchone()
    sent = {m.seq: m.payload for m in box.take(10)}
    assert size * 3 < len(sent[large]), "what the card holds is the compressed payload"
    body = json.loads(sent[large])
    assert body["seq"] == large
    assert len(body["points"]) == 1000
    assert json.loads(sent[small])["points"]["d.v000"]["value"] == 0.0
    assert box.size() == sum(s for (s,) in box.conn.execute("SELECT size FROM outbox")), (
        "the bound counts the bytes stored"
    )
    box.close()


def test_the_outbox_counts_its_own_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module, "WAL_CHECKPOINT", 64 * 1024)
    path = tmp_path / "state.sqlite"
    box = _open(path)
    assert box.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    for i in range(50):
        box.put([Record("alarm", {"i": i, "pad": "x" * 2000}, WALL + i)])
    checkpoints = (box.syncs - 50 - 4) // 2  # 50 synced puts; the open's checkpoint, a mark
    assert checkpoints >= 1
    # The WAL is truncated when it restarts after a checkpoint: it never holds much more.
    assert os.stat(f"{path}-wal").st_size < 2 * 64 * 1024
    assert sqlite3.connect(path).execute("PRAGMA quick_check").fetchone() == ("ok",)
    box.close()
