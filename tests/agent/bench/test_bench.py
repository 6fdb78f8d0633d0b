"""The benchmark command runs and measures what it says; its figures go in notes, not asserts."""

from __future__ import annotations

from massgate.agent.bench.drivers import bench_drivers


def test_bench_drivers_compares_the_planner_with_one_request_per_point():
    planned, single = bench_drivers(points=16, seconds=0.2)
    assert planned.requests_per_cycle == 1
    assert single.requests_per_cycle == 16
    assert planned.cycles > 0
    assert single.cycles > 0
    assert planned.cpu > 0


def test_numpy_equivalents_compute_what_the_kernels_compute():
    """The benchmark's numpy rows are only a fair comparison if they compute the same outputs:
    totals, estimated quantity, gap, covered and flow time, register faults, volumes."""
    from massgate.agent.bench.totalizer import agree, np_flow, signal

    assert agree(samples=50_000) == []
    outputs = np_flow(signal(50_000))
    # The signal exercises what is compared: reverse flow, bridged bad samples, long gaps.
    assert outputs["reverse"] > 0
    assert outputs["estimated"] > 0
    assert outputs["gap"] > 0


def test_bench_totalizer_prints_every_kernel_and_the_first_call_times():
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "massgate.agent.commands.cli",
            "bench",
            "totalizer",
            "--samples",
            "20000",
            "--python-samples",
            "2000",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for kernel in ("integrate_flow", "integrate_volume (T/P)", "difference_register", "strapping"):
        assert kernel in done.stdout
    assert "empty cache" in done.stdout
    assert "warm cache" in done.stdout
    assert "agree to 1e-9" in done.stdout


def test_bench_outbox_measures_enqueue_both_drains_and_a_backlog():
    from massgate.agent.bench.outbox import bench_outbox

    f = bench_outbox(messages=600, backlog=2000, points=3, seconds=0.1, rounds=1)
    assert [e.batch for e in f.enqueue] == [1, 10, 100, 1000]
    assert all(e.records >= e.batch for e in f.enqueue)
    assert f.ours_s > 0
    assert f.raw_s > 0
    assert f.backlog == 2000
    assert f.backlog_drain_s > 0
    assert f.backlog_bytes > 2000 * 50
    assert 0 <= f.outage_stall_s < 30  # measured (seconds × 5 of outage), not judged here


def test_bench_ingest_stores_every_record_through_a_broker_restart_and_a_sigkill():
    from massgate.agent.bench.ingest import bench_ingest

    f = bench_ingest(records=500, fault_records=1500, points=3)
    assert f.ingest_per_s > 0
    assert f.copy_per_s > 0
    assert (f.stored, f.unexplained) == (1500, 0)


def test_bench_e2e_runs_a_small_site_through_the_whole_agent():
    """5 devices × 4 points polled once a second is 20 points/s: the bench must see that."""
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "massgate.agent.commands.cli", "bench", "e2e", "--json",
         "--devices", "5", "--device-points", "4", "--e2e-seconds", "4"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = {row["figure"]: row for row in json.loads(done.stdout)}
    assert all(row["bench"] == "e2e" for row in rows.values())
    slow = next(row for name, row in rows.items() if name.startswith("CPU at"))
    rate = float(slow["figure"].split()[2])
    assert 10 <= rate <= 30  # 20 points/s, give or take a poll at either end of 4 s
    fast = rows["points/s, every 10 ms"]["value"]
    assert fast > 5 * rate  # polled every 10 ms instead of every second
    assert 0 < rows["start to first poll, warm cache"]["value"] < 60
    assert rows[f"RSS at {rate:.0f} points/s"]["value"] > 20


def test_bench_with_a_bad_choice_says_what_there_is():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "massgate.agent.commands.cli", "bench", "everything"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    choices = "'all', 'drivers', 'totalizer', 'outbox', 'ingest', 'e2e', 'footprint'"
    assert f"choose from {choices}" in done.stderr
