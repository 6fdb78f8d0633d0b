"""Codec, planner and the TCP poller against real pymodbus slaves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from massgate.drivers.errors import FatalError
from massgate.drivers.modbus import codec
from massgate.drivers.modbus.model import Point, TcpDevice
from massgate.drivers.modbus.planner import plan
from massgate.drivers.modbus.tcp import TcpPoller
from massgate.drivers.sim.plant import Plant
from massgate.drivers.sim.server import SimulatedSite
from tests.conftest import run_async

SAMPLES = {
    "int16": [-32768, -1, 0, 12345],
    "uint16": [0, 1, 65535],
    "int32": [-(2**31), -7, 0, 2**31 - 1],
    "uint32": [0, 2**32 - 1, 123456789],
    "int64": [-(2**63), -1, 2**53 + 1],
    "uint64": [0, 2**64 - 1, 2**40 + 3],
    "float32": [0.0, -1.5, 3.4028234663852886e38, 1.1754943508222875e-38],
    "float64": [0.0, -2.5e-300, 1.7976931348623157e308, math.pi],
}


@pytest.mark.parametrize("order", codec.ORDERS)
@pytest.mark.parametrize("type_name", sorted(SAMPLES))
def test_decode_inverts_encode(type_name: str, order: str):
    block: list[int] = []
    offsets = []
    for value in SAMPLES[type_name]:
        offsets.append(len(block))
        block.extend(codec.encode(value, type_name, order))
    got = codec.decode(
        np.asarray(block, dtype=np.uint16), np.asarray(offsets, dtype=np.intp), type_name, order
    )
    want = np.asarray(SAMPLES[type_name], dtype=np.float64)
    np.testing.assert_array_equal(got, want)


def test_word_orders_match_the_wire():
    """1.0 as float32 is 0x3F800000: bytes A=3F B=80 C=00 D=00."""
    assert codec.encode(1.0, "float32", "ABCD") == [0x3F80, 0x0000]
    assert codec.encode(1.0, "float32", "CDAB") == [0x0000, 0x3F80]
    assert codec.encode(1.0, "float32", "BADC") == [0x803F, 0x0000]
    assert codec.encode(1.0, "float32", "DCBA") == [0x0000, 0x803F]


def _point(address: int, type_name: str = "float32", table: str = "holding") -> Point:
    return Point(
        tag=f"d.p{address}",
        table=table,
        address=address,
        type=type_name,
        order="ABCD",
        factor=1.0,
        offset=0.0,
        unit="kg/s",
    )


def test_planner_merges_a_30_register_device_with_small_gaps():
    # 12 float32 values over registers 0..29 with gaps of 1–2 registers, plus 2 input regs.
    addresses = [0, 2, 5, 7, 9, 12, 14, 17, 19, 22, 25, 28]
    points = (*tuple(_point(a) for a in addresses), _point(0, "uint16", "input"))
    assert len(plan(points, max_registers=125, gap_fill=8)) == 2
    # Without gap fill only contiguous runs merge: {0,2} {5,7,9} {12,14} {17,19} {22} {25} {28}.
    assert len(plan(points, max_registers=125, gap_fill=0)) == 7 + 1
    # A device that answers at most 10 registers a request.
    limited = plan(points, max_registers=10, gap_fill=8)
    assert all(r.count <= 10 for r in limited)
    assert sorted(p.address for r in limited for g in r.groups for p in g.points) == sorted(
        p.address for p in points
    )


def test_poller_reads_the_simulated_meters_in_si():
    async def main() -> None:
        plant = Plant()
        site = SimulatedSite(plant)
        served = await site.start()
        try:
            from massgate.agent import units
            from massgate.drivers import profiles

            for s in served:
                profile = profiles.load(s.meter.profile)
                points = tuple(
                    Point(
                        tag=f"{s.meter.name}.{p.name}",
                        table=p.table,
                        address=p.address,
                        type=p.type,
                        order=p.order,
                        factor=units.lookup(p.unit).factor,
                        offset=units.lookup(p.unit).offset,
                        unit=p.unit,
                    )
                    for p in profile.points
                )
                device = TcpDevice(
                    name=s.meter.name,
                    host=s.host,
                    port=s.port,
                    unit_id=1,
                    poll_interval=0.1,
                    timeout=1.0,
                    points=points,
                )
                poller = TcpPoller(device, emit=lambda b: None)
                assert len(poller.requests) == 1  # every profile fits one request
                batch = await poller.poll_once()
                await poller._close()
                truth = s.meter.read()
                for name, value in truth.items():
                    # Rates: float32 on the wire and the meter's noise. Totals: they grow
                    # between the poll and this read, by at most a few kg in a few ms.
                    slack = 0.1 if name.endswith("_total") else 1e-6
                    assert batch.values[f"{s.meter.name}.{name}"] == pytest.approx(
                        value, rel=2e-3, abs=slack
                    ), name
        finally:
            await site.stop()

    run_async(main())


def test_illegal_address_is_a_fatal_error_naming_the_register():
    async def main() -> None:
        site = SimulatedSite(Plant())
        served = await site.start()
        try:
            s = served[2]  # the temperature transmitter has registers 0..1 only
            device = TcpDevice(
                name="tt",
                host=s.host,
                port=s.port,
                unit_id=1,
                poll_interval=0.1,
                timeout=1.0,
                points=(_point(40),),
            )
            poller = TcpPoller(device, emit=lambda b: None)
            with pytest.raises(
                FatalError, match=r"illegal data address.*holding registers 40\.\.41"
            ):
                await poller.poll_once()
            await poller._close()
        finally:
            await site.stop()

    run_async(main())


def test_a_dead_device_gives_bad_batches_not_a_crash():
    import asyncio

    from massgate.agent.samples import Quality
    from tests.conftest import free_port

    async def main() -> None:
        device = TcpDevice(
            name="gone",
            host="127.0.0.1",
            port=free_port(),
            unit_id=1,
            poll_interval=0.05,
            timeout=0.2,
            points=(_point(0),),
        )
        batches = []
        poller = TcpPoller(device, emit=batches.append)
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        while len(batches) < 3:
            await asyncio.sleep(0.02)
        stop.set()
        await task
        assert all(b.quality is Quality.BAD and math.isnan(b.values["d.p0"]) for b in batches)
        assert "cannot connect" in (batches[0].error or "")
        assert not poller.up

    run_async(main())
