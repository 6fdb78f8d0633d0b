"""Wrong replies are never good data: a raw-socket slave per fault, one device each.

A reply is good only if function code, byte count, register count and frame length match
the request; anything else is a garbled reply, counted, and the poll is BAD with NaN values.
A float register holding ±inf is a bad sample of that point. An illegal address at start-up
is a configuration error; from a device that answered before, it is a device fault.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from massgate.agent.core.samples import Batch, Quality
from massgate.drivers.base import FatalError
from massgate.drivers.modbus.poller import DevicePoller, close_buses, pollers_for
from massgate.drivers.sim.ptypair import PtyPair
from tests.conftest import run_async
from tests.drivers.modbus.misbehaving import MODES, RTU_MODES, MisbehavingSlave, RtuMisbehavingSlave
from tests.drivers.modbus.test_modbus import devices_from

POLLS = 3
# Two float32 values in registers 0..3, one try per poll: each poll is one request.
DEVICE = {
    "timeout": "300ms",
    "retries": 0,
    "points": [
        {"name": "a", "address": 0, "type": "float32", "unit": "kg/s"},
        {"name": "b", "address": 2, "type": "float32", "unit": "kg/s"},
    ],
}


def _poller(tmp_path: Path, port: int) -> DevicePoller:
    devices = devices_from(
        [
            {
                "name": "ft",
                "protocol": "modbus_tcp",
                "host": "127.0.0.1",
                "port": port,
                **DEVICE,
            }
        ],
        tmp_path,
    )
    return pollers_for(devices, emit=lambda _: None)[0]


@pytest.mark.parametrize("mode", [m for m in MODES if m not in ("exception_1", "exception_2")])
def test_no_wrong_reply_is_taken_as_good(mode: str, tmp_path: Path):
    async def main() -> None:
        slave = MisbehavingSlave(mode)
        await slave.start()
        poller = _poller(tmp_path, slave.port)
        try:
            batches = [await poller.poll() for _ in range(POLLS)]
        finally:
            await close_buses([poller])
            await slave.stop()
        assert slave.requests >= 1 or mode == "garbage"
        if mode == "good":
            assert poller.stats.good == POLLS
            assert all(b.values == {"ft.a": 12.5, "ft.b": 12.5} for b in batches)
            return
        values = [v for b in batches for v in b.values.values()]
        assert all(math.isnan(v) for v in values), (mode, values)
        if mode == "inf":  # a correct frame: the reply is good, its values are not
            assert all(b.quality is Quality.UNCERTAIN for b in batches)
            assert "ft.a read inf" in (batches[0].error or "")
            return
        assert poller.stats.good == 0, mode
        assert all(b.quality is Quality.BAD for b in batches), mode
        assert not poller.up
        if mode in ("oversized", "byte_count_high", "byte_count_low", "odd_byte_count",
                    "wrong_function"):  # fmt: skip
            assert poller.stats.garbled == POLLS, (mode, poller.stats)
            assert "does not match the request" in (batches[0].error or "")

    run_async(main())


@pytest.mark.parametrize("code", [1, 2])
def test_an_illegal_read_at_start_up_is_a_configuration_error(code: int, tmp_path: Path):
    async def main() -> None:
        slave = MisbehavingSlave(f"exception_{code}")
        await slave.start()
        poller = _poller(tmp_path, slave.port)
        try:
            with pytest.raises(FatalError, match="check the register map"):
                await poller.poll()
        finally:
            await close_buses([poller])
            await slave.stop()

    run_async(main())


def test_an_illegal_address_after_good_polls_is_a_device_fault_that_recovers(tmp_path: Path):
    """A firmware update or a mode change: the device answered this read before."""

    async def main() -> None:
        slave = MisbehavingSlave("good")
        await slave.start()
        poller = _poller(tmp_path, slave.port)
        try:
            assert (await poller.poll()).quality is Quality.GOOD
            slave.mode = "exception_2"
            failed = [await poller.poll() for _ in range(POLLS)]
            assert all(b.quality is Quality.BAD for b in failed)
            assert "illegal data address" in (failed[0].error or "")
            assert not poller.up
            slave.mode = "good"
            assert (await poller.poll()).quality is Quality.GOOD
            assert poller.up
        finally:
            await close_buses([poller])
            await slave.stop()

    run_async(main())


@pytest.mark.parametrize("mode", RTU_MODES)
def test_no_wrong_rtu_reply_is_taken_as_good(mode: str, tmp_path: Path):
    """The same over RS-485: a raw slave on the far end of a socat pseudo-terminal pair."""
    with PtyPair() as (master, slave_end):
        devices = devices_from(
            [
                {
                    "name": "ft",
                    "protocol": "modbus_rtu",
                    "line": "rs485",
                    "unit_id": 3,
                    **DEVICE,
                }
            ],
            tmp_path,
            lines=[{"name": "rs485", "port": master, "baudrate": 115200}],
        )
        slave = RtuMisbehavingSlave(slave_end, mode)
        slave.start()

        async def main() -> list[Batch]:
            (poller,) = pollers_for(devices, emit=lambda _: None)
            try:
                return [await poller.poll() for _ in range(POLLS)]
            finally:
                await close_buses([poller])

        try:
            batches = run_async(main())
        finally:
            slave.stop()
    assert slave.requests >= 1
    if mode == "good":
        assert all(b.quality is Quality.GOOD for b in batches)
        assert all(b.values == {"ft.a": 12.5, "ft.b": 12.5} for b in batches)
        return
    assert all(b.quality is Quality.BAD for b in batches), (mode, [b.error for b in batches])
    assert all(math.isnan(v) for b in batches for v in b.values.values())
