"""A damaged or rolled-back outbox: quarantined, never a crash or a restart loop, and no
(epoch, seq) ever names two different records.

Real files, real damage: garbage over a table's root page, a truncated file, a page of the
archive found damaged while running, a backup restored over a live database.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from massgate.agent import config as config_module
from massgate.agent.core.records import Record
from massgate.agent.runtime.gateway import outbox_reset_record
from massgate.agent.runtime.pipeline import Agent, run
from massgate.agent.store.outbox import SEQ_BLOCK, Outbox
from tests.conftest import free_port, run_async

WALL = 1_800_000_000.0


def _records(n: int, kind: str = "totals", start: int = 0) -> list[Record]:
    return [Record(kind, {"i": start + i}, WALL + start + i) for i in range(n)]


def _open(path: Path) -> Outbox:
    return Outbox(path, max_bytes=10**9, site="s", gateway="g")


def _garbage_over_root_page(path: Path, table: str) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    db.close()
    with path.open("r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(os.urandom(page_size))


def _issued(outbox: Outbox) -> set[tuple[str, int, bytes]]:
    return {(outbox.epoch, m.seq, m.payload) for m in outbox.take(10**6)}


@pytest.mark.parametrize("table", ["totals", "outbox", "archive", "meta"])
def test_garbage_over_a_root_page_is_quarantined_at_start(tmp_path: Path, table: str):
    path = tmp_path / "state.sqlite"
    box = _open(path)
    box.put([*_records(50), *_records(5, "balance", 50)], totals={"feed": {"kg": 1.0}})
    old_epoch = box.epoch
    box.close()
    _garbage_over_root_page(path, table)

    box = _open(path)  # no exception: a start never dies of its database
    try:
        assert box.reset is not None
        assert box.reset["cause"] == "unreadable"
        assert box.moved_aside is not None
        assert Path(box.moved_aside).exists()
        if table != "meta":  # what the old file can still tell, it tells
            assert box.reset["old_epoch"] == old_epoch
        assert box.epoch != old_epoch
        assert box.load_totals() == {}
        outbox_reset_record(box)
        (alarm,) = box.take(10)
        assert b'"outbox_reset"' in alarm.payload
        assert b'"cause":"unreadable"' in alarm.payload
        box.put(_records(3))  # and it keeps producing
        assert box.depth() == 4
    finally:
        box.close()


def test_a_truncated_file_is_quarantined_at_start(tmp_path: Path):
    path = tmp_path / "state.sqlite"
    box = _open(path)
    box.put(_records(2000))
    box.close()
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)
    box = _open(path)
    try:
        assert box.reset is not None
        assert box.reset["cause"] == "unreadable"
        box.put(_records(1))
        assert box.depth() == 1
    finally:
        box.close()


def test_a_page_found_damaged_while_running_is_quarantined_and_the_agent_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The archive is read only by the hourly prune and by reports: damage there is found
    late. It is quarantined where it is found, with the alarm, and nothing raises."""
    path = tmp_path / "state.sqlite"
    box = _open(path)
    box.put(_records(200, "balance"))
    box.close()
    _garbage_over_root_page(path, "archive")
    # A large file on a slow card: the start-up check ran out of time before the archive.
    monkeypatch.setattr(Outbox, "_probe", lambda self, conn: None)
    box = _open(path)
    resets: list[str] = []
    box.on_reset = lambda: resets.append(box.epoch)
    try:
        assert box.reset is None
        assert box.prune_archive("balance", WALL + 100) == 0  # on the new, empty file
        assert resets == [box.epoch]
        assert box.reset is not None
        assert box.reset["cause"] == "damaged"
        box.put(_records(2))
        assert box.depth() == 2
    finally:
        box.close()


def test_a_restored_backup_starts_a_new_epoch_and_never_reuses_a_seq(tmp_path: Path):
    """A backup (or VM snapshot) restored over the database: its next sequence numbers were
    published already with other records. A new epoch starts above them."""
    path = tmp_path / "state.sqlite"
    backup = tmp_path / "backup.sqlite"
    box = _open(path)
    box.put(_records(10))
    target = sqlite3.connect(backup)
    box.conn.backup(target)
    target.close()
    issued = _issued(box)
    box.put(_records(SEQ_BLOCK + 50, start=10))  # past the reservation the backup knows
    issued |= _issued(box)
    before_epoch, last = box.epoch, box.last_seq()
    box.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    backup.rename(path)

    box = _open(path)
    try:
        assert box.reset is not None
        assert box.reset["cause"] == "rolled_back"
        assert box.reset["old_epoch"] == before_epoch
        assert box.epoch != before_epoch
        assert box.depth() == 10  # its unsent records go out as they were made
        box.put(_records(5, start=99_999))
        assert box.last_seq() > last
        now = _issued(box)
    finally:
        box.close()
    # No (epoch, seq) names two different records.
    named: dict[tuple[str, int], set[bytes]] = {}
    for epoch, seq, payload in [*issued, *now]:
        named.setdefault((epoch, seq), set()).add(payload)
    assert all(len(payloads) == 1 for payloads in named.values())


def test_a_clean_restart_keeps_its_epoch(tmp_path: Path):
    """The mark must not take an ordinary restart (a crash after a reservation included)
    for a rolled-back database."""
    path = tmp_path / "state.sqlite"
    box = _open(path)
    box.put(_records(SEQ_BLOCK + 10))
    epoch, last = box.epoch, box.last_seq()
    box.close()
    box = _open(path)
    try:
        assert box.reset is None
        assert box.epoch == epoch
        box.put(_records(1))
        assert box.last_seq() == last + 1
    finally:
        box.close()


def test_the_agent_comes_up_on_a_damaged_database_and_keeps_producing(tmp_path: Path):
    config_path = tmp_path / "m.yaml"
    config_path.write_text(
        f"gateway: {{site: s, id: g, state_dir: {tmp_path / 'state'}}}\ndevices:\n"
        f"  - {{name: ft1, protocol: modbus_tcp, host: 127.0.0.1, port: {free_port()}, "
        "profile: coriolis, poll_interval: 200ms, timeout: 100ms}\n"
        "telemetry:\n  interval: 200ms\n"
    )
    config = config_module.load(config_path)
    (tmp_path / "state").mkdir()
    box = _open(config.outbox.path)
    box.put(_records(100), totals={"x": {"state": []}})
    box.close()
    _garbage_over_root_page(config.outbox.path, "totals")
    seen: list[Agent] = []

    def on_cycle(agent: Agent) -> None:
        if not seen:
            seen.append(agent)
        if agent.outbox.depth() >= 5:
            shutdown.set()

    shutdown = asyncio.Event()
    run_async(asyncio.wait_for(run(config, shutdown=shutdown, on_cycle=on_cycle), 60))
    box = _open(config.outbox.path)
    try:
        kinds = [m.topic.rsplit("/", 1)[1] for m in box.take(100)]
    finally:
        box.close()
    assert kinds[0] == "alarm"  # outbox_reset, first of the new database
    assert "telemetry" in kinds


def test_report_on_a_damaged_file_says_so_in_one_line(tmp_path: Path):
    import subprocess
    import sys

    config = tmp_path / "m.yaml"
    config.write_text(
        f"gateway: {{site: s, id: g, state_dir: {tmp_path / 'state'}}}\ndevices:\n"
        "  - {name: ft1, protocol: modbus_tcp, host: 127.0.0.1, profile: coriolis}\n"
    )
    (tmp_path / "state").mkdir()
    path = tmp_path / "state" / "state.sqlite"
    box = _open(path)
    box.put(_records(300, "balance"))
    box.close()
    _garbage_over_root_page(path, "archive")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "massgate.agent.commands.cli",
            "report",
            str(config),
            "--from",
            "100000d",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "the state database is damaged" in result.stderr


WRITER = r"""
import json, os, sys
from massgate.agent.store.outbox import SEQ_BLOCK, Outbox
from massgate.agent.core.records import Record
box = Outbox(sys.argv[1], max_bytes=10**9, site="s", gateway="g")
box.put([Record("totals", {"i": i}, 1.8e9 + i) for i in range(10)])
box.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
seqs = box.put([Record("totals", {"i": i}, 1.8e9 + i) for i in range(SEQ_BLOCK + 10)])
print(json.dumps({"epoch": box.epoch, "last": seqs[-1]}), flush=True)
os._exit(0)  # a power cut: nothing checkpointed, the WAL left as it is
"""


def test_a_damaged_wal_frame_drops_what_followed_and_never_reuses_a_seq(tmp_path: Path):
    """SQLite ignores a WAL frame whose checksum fails and every frame after it: writes the
    agent was told were done are gone. The sequence mark notices and starts a new epoch."""
    import json
    import subprocess
    import sys

    path = tmp_path / "state.sqlite"
    done = subprocess.run(
        [sys.executable, "-c", WRITER, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    issued = json.loads(done.stdout)
    wal = Path(f"{path}-wal")
    assert wal.stat().st_size > 32 + 24
    with wal.open("r+b") as f:
        f.seek(32 + 24 + 100)  # inside the first frame's page: its checksum fails
        f.write(os.urandom(64))
    box = _open(path)
    try:
        assert box.reset is not None
        assert box.reset["cause"] == "rolled_back"
        assert box.reset["old_epoch"] == issued["epoch"]
        assert box.epoch != issued["epoch"]
        (seq,) = box.put(_records(1))
        assert seq > issued["last"]
    finally:
        box.close()
