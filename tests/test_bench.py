"""The benchmark command runs and measures what it says; its figures go in notes, not asserts."""

from __future__ import annotations

from massgate.agent.bench import bench_drivers


def test_bench_drivers_compares_the_planner_with_one_request_per_point():
    planned, single = bench_drivers(points=16, seconds=0.2)
    assert planned.requests_per_cycle == 1
    assert single.requests_per_cycle == 16
    assert planned.cycles > 0
    assert single.cycles > 0
    assert planned.cpu > 0
