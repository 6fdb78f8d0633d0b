"""A meter that keeps failing: one ERROR, then summaries, then one line when it answers."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from massgate.agent.core.samples import Quality
from massgate.drivers.modbus.poller import close_buses
from massgate.drivers.sim.faults import Fault
from massgate.drivers.sim.plant import Plant
from massgate.drivers.sim.server import SimulatedSite
from tests.conftest import run_async
from tests.drivers.modbus.test_modbus import impatient_tt102

FAILURES = 8


def test_a_failing_device_is_logged_once_then_summarized(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO)

    async def main() -> list[Quality]:
        plant = Plant()
        site = SimulatedSite(plant)
        served = await site.start()
        try:
            poller = impatient_tt102(served, tmp_path)
            poller.health.summary_every = 0.5
            qualities = [(await poller.poll()).quality]
            plant.faults.add(Fault(kind="dropout", target="tt102"))
            qualities += [(await poller.poll()).quality for _ in range(FAILURES)]
            assert not poller.up
            assert poller.health.down_since is not None
            plant.faults.clear("tt102")
            qualities.append((await poller.poll()).quality)
            assert poller.up
            assert poller.health.failed == FAILURES
            assert poller.health.good == 2
            await close_buses([poller])
        finally:
            await site.stop()
        return qualities

    qualities = run_async(main())
    assert qualities == [Quality.GOOD] + [Quality.BAD] * FAILURES + [Quality.GOOD]
    mine = [r for r in caplog.records if getattr(r, "device", None) == "tt102"]
    errors = [r for r in mine if r.levelno == logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "no reply" in errors[0].getMessage()
    summaries = [r.getMessage() for r in mine if "still not answering" in r.getMessage()]
    # Each poll waits out its 200 ms timeout, so eight failures span more than one summary
    # interval of 0.5 s, and fewer summaries than failures.
    assert 1 <= len(summaries) < FAILURES - 1, summaries
    counts = [int(m.group(1)) for s in summaries if (m := re.search(r"(\d+) failed polls", s))]
    assert len(counts) == len(summaries)
    assert counts == sorted(counts)
    assert counts[-1] <= FAILURES
    recovered = [r.getMessage() for r in mine if "reading again" in r.getMessage()]
    assert len(recovered) == 1
    assert f"({FAILURES} failed polls)" in recovered[0]
