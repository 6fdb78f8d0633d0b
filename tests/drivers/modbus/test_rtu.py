"""Modbus RTU over a real pseudo-terminal pair (socat): several slaves on one line."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from massgate.agent.core.samples import Batch, Quality
from massgate.drivers.modbus.poller import close_buses, pollers_for
from massgate.drivers.sim.faults import Fault
from massgate.drivers.sim.plant import Plant
from massgate.drivers.sim.ptypair import PtyPair
from massgate.drivers.sim.server import SerialSlaves, meters_of
from tests.conftest import run_async
from tests.drivers.modbus.test_modbus import devices_from


@pytest.fixture
def line() -> Iterator[tuple[str, str]]:
    with PtyPair() as ends:
        yield ends


def _rtu_devices(port: str, tmp_path: Path, **overrides: object) -> tuple:
    common = {
        "protocol": "modbus_rtu",
        "line": "rs485",
        "poll_interval": "100ms",
        "timeout": "200ms",
        "retries": 1,
        "degrade_after": 2,
        "degraded_interval": "5s",
        **overrides,
    }
    return devices_from(
        [
            {"name": "ft101", "unit_id": 1, "profile": "coriolis", **common},
            {"name": "wt100", "unit_id": 2, "profile": "load_cell", **common},
        ],
        tmp_path,
        lines=[{"name": "rs485", "port": port, "baudrate": 115200}],
    )


async def _serve(slave_end: str, units: dict[int, str]) -> tuple[Plant, SerialSlaves]:
    """The plant with the named meters as RTU slaves on the far end of the line."""
    plant = Plant()
    meters = {m.name: m for m in meters_of(plant)}
    slaves = SerialSlaves(
        slave_end, {uid: meters[name] for uid, name in units.items()}, plant, baudrate=115200
    )
    await slaves.start()
    return plant, slaves


def _rate(batches: list[Batch], device: str, start: float, end: float) -> float:
    """Good polls per second of one device between two monotonic times."""
    good = [
        b
        for b in batches
        if b.device == device and b.quality is Quality.GOOD and start <= b.mono < end
    ]
    return len(good) / (end - start)


def test_a_dead_slave_does_not_slow_the_live_one_and_comes_back(line, tmp_path: Path):
    master, slave_end = line
    devices = _rtu_devices(master, tmp_path)

    async def main() -> None:
        plant, slaves = await _serve(slave_end, {1: "ft101", 2: "wt100"})
        batches: list[Batch] = []
        pollers = pollers_for(devices, emit=batches.append)
        assert pollers[0].bus is pollers[1].bus  # one line, one lock
        stop = asyncio.Event()
        tasks = [asyncio.create_task(p.run(stop)) for p in pollers]
        loop = asyncio.get_running_loop()
        try:
            await asyncio.sleep(1.0)
            t0 = loop.time()
            healthy = _rate(batches, "wt100", t0 - 1.0, t0)

            plant.faults.add(Fault(kind="dropout", target="ft101", start=plant.now()))
            for _ in range(100):  # bounded: two polls with one retry each, ~1 s
                if pollers[0].degraded:
                    break
                await asyncio.sleep(0.05)
            assert pollers[0].degraded
            t1 = loop.time()
            await asyncio.sleep(3.0)
            # While the dead slave is degraded the live one keeps its rate: the dead one
            # costs one 200 ms timeout every 5 s instead of two every poll.
            during = _rate(batches, "wt100", t1, t1 + 3.0)
            assert during >= 0.8 * healthy, (healthy, during)
            assert _rate(batches, "ft101", t1, t1 + 3.0) == 0

            plant.faults.clear("ft101")
            for _ in range(150):  # bounded: it is asked again within degraded_interval
                if not pollers[0].degraded:
                    break
                await asyncio.sleep(0.05)
            assert not pollers[0].degraded
            t2 = loop.time()
            await asyncio.sleep(1.0)
            assert _rate(batches, "ft101", t2, t2 + 1.0) >= 0.8 * healthy
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            await close_buses(pollers)
            await slaves.stop()
        assert healthy >= 8  # 100 ms poll interval
        stats = pollers[0].stats
        assert stats.timeouts >= 2
        assert stats.failed >= 2
        bad = [b for b in batches if b.device == "ft101" and b.quality is Quality.BAD]
        assert len(bad) == stats.failed
        assert all("no reply" in (b.error or "") for b in bad)

    run_async(main())


def test_crc_garbage_and_exception_replies_are_counted_and_never_crash(line, tmp_path: Path):
    master, slave_end = line
    devices = _rtu_devices(master, tmp_path, retries=0, degrade_after=1000)

    async def main() -> None:
        plant, slaves = await _serve(slave_end, {1: "ft101", 2: "wt100"})
        pollers = pollers_for(devices, emit=lambda b: None)
        ft, wt = pollers
        try:
            plant.faults.add(Fault(kind="crc", target="ft101", magnitude=1.0))
            plant.faults.add(Fault(kind="exception", target="wt100", magnitude=6))
            crc = [await ft.poll() for _ in range(4)]
            busy = [await wt.poll() for _ in range(3)]
            plant.faults.clear()
            after = [await ft.poll(), await wt.poll()]
        finally:
            await close_buses(pollers)
            await slaves.stop()
        assert all(b.quality is Quality.BAD for b in crc + busy)
        assert all("CRC or framing" in (b.error or "") for b in crc)
        assert all("server device busy" in (b.error or "") for b in busy)
        assert [b.quality for b in after] == [Quality.GOOD, Quality.GOOD]
        # What the slave garbled is what the master counted, one for one.
        assert slaves.garbled == 4
        assert ft.stats.garbled == 4
        assert ft.bus.stats.garbled == 4
        assert wt.stats.exceptions == 3
        assert wt.bus.stats.exceptions == 3
        assert ft.stats.timeouts == 0  # garbage is not mistaken for silence

    run_async(main())


def test_slow_replies_within_the_timeout_are_good_and_beyond_it_are_no_reply(line, tmp_path: Path):
    master, slave_end = line
    devices = _rtu_devices(master, tmp_path, retries=0, degrade_after=1000)

    async def main() -> None:
        plant, slaves = await _serve(slave_end, {1: "ft101"})
        (ft, _) = pollers_for(devices, emit=lambda b: None)
        try:
            plant.faults.add(Fault(kind="slow", target="ft101", magnitude=0.1))
            within = await ft.poll()
            plant.faults.clear()
            plant.faults.add(Fault(kind="slow", target="ft101", magnitude=0.4))
            beyond = await ft.poll()
            plant.faults.clear()
            # The late reply arrives while nobody waits for it; the next poll must not
            # take it for its own answer.
            await asyncio.sleep(0.3)
            recovered = await ft.poll()
        finally:
            await close_buses([ft])
            await slaves.stop()
        assert within.quality is Quality.GOOD
        assert beyond.quality is Quality.BAD
        assert "no reply" in (beyond.error or "")
        assert recovered.quality is Quality.GOOD, recovered.error

    run_async(main())
