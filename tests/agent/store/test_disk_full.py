"""A real full disk: the outbox on a small tmpfs, mounted in a user namespace of its own (no
root needed, nothing mounted on the machine). Every record made is either in the outbox or
counted as dropped, alarms are kept, nothing raises, and writing resumes when room returns.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = r"""
import json, logging, os, subprocess, sqlite3, sys, time
from collections import Counter
from pathlib import Path
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
disk = Path(sys.argv[1])
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], check=True)
from massgate.agent.store.outbox import Outbox
from massgate.agent.core.records import Record

def free():
    st = os.statvfs(disk)
    return st.f_bavail * st.f_frsize

box = Outbox(disk / "state.sqlite", max_bytes=100_000_000, site="s", gateway="g")
made = Counter()
phases = {}

def cycle(i):
    records = [Record("telemetry", {"points": {"v": {"value": i, "x": "." * 200}}}, 1.8e9 + i)]
    if i % 5 == 0:
        records.append(Record("totals", {"i": i}, 1.8e9 + i))
    if i % 20 == 0:
        records.append(Record("alarm", {"i": i}, 1.8e9 + i))
    made.update(r.kind for r in records)
    box.put(records, totals={"feed": {"i": i}})
    time.sleep(0.0003)

# 1: the disk has less room than outbox.max_size: the outbox evicts before SQLite fails.
(disk / "ballast-1").write_bytes(b"\0" * (free() - 6_000_000))
for i in range(0, 4000):
    cycle(i)
phases["dropped_before_full"] = box.dropped()
# 2: another program fills the disk: SQLite finds it full; records are held.
with (disk / "ballast-2").open("wb", buffering=0) as f:  # nothing left to flush at close
    try:
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    except OSError:
        pass
for i in range(4000, 5000):
    cycle(i)
phases["full_errors"] = box._full_at > 0
phases["held"] = len(box._held)
# 3: room again.
(disk / "ballast-1").unlink()
(disk / "ballast-2").unlink()
time.sleep(1.1)
for i in range(5000, 5100):
    cycle(i)
phases["held_after"] = len(box._held)
box.close()
db = sqlite3.connect(disk / "state.sqlite")
stored = dict(db.execute("SELECT kind, count(*) FROM outbox GROUP BY kind").fetchall())
totals = db.execute("SELECT state FROM totals WHERE stream = 'feed'").fetchone()[0]
dropped = {k.removeprefix("dropped_"): int(v) for k, v in db.execute(
    "SELECT key, value FROM meta WHERE key LIKE 'dropped_%'")}
print(json.dumps({"made": made, "stored": stored, "dropped": dropped, "phases": phases,
                  "totals": json.loads(totals)}))
"""


def test_a_full_disk_evicts_by_priority_holds_and_recovers(tmp_path: Path):
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.fail("unshare (util-linux) is needed for the disk-full test")
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(
        [unshare, "--user", "--map-root-user", "--mount", sys.executable, "-c", CHILD, str(disk)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)
    made, stored, dropped = result["made"], result["stored"], result["dropped"]
    phases = result["phases"]
    print(f"disk full: made {made}, stored {stored}, dropped {dropped}, {phases}")
    assert phases["dropped_before_full"].get("telemetry", 0) > 0, "the disk's room was ignored"
    assert phases["full_errors"], "SQLite never found the disk full"
    assert phases["held"] > 0
    assert phases["held_after"] == 0, "held records were not written when room came back"
    assert "disk is full" in done.stderr
    # Every record made is in the outbox or counted as dropped: nothing vanished.
    for kind in made:
        assert stored.get(kind, 0) + dropped.get(kind, 0) == made[kind], kind
    assert dropped.get("telemetry", 0) > 0
    assert "alarm" not in dropped, "an alarm was dropped while telemetry could have gone"
    # Writing resumed when the disk had room again: the last totals state is the newest.
    assert result["totals"] == {"i": 5099}
