"""Codec, planner and the pollers against real pymodbus slaves over TCP."""

from __future__ import annotations

import asyncio
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from massgate.agent import config as cfg
from massgate.agent.core.samples import Quality
from massgate.drivers import profiles
from massgate.drivers.base import FatalError
from massgate.drivers.modbus import codec
from massgate.drivers.modbus.model import ModbusDevice, Point, TcpLink
from massgate.drivers.modbus.planner import plan
from massgate.drivers.modbus.poller import DevicePoller, close_buses, pollers_for
from massgate.drivers.sim.plant import Plant
from massgate.drivers.sim.server import Meter, MeterSlave, SimulatedSite
from tests.conftest import free_port, run_async

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


def devices_from(
    devices: list[dict[str, Any]], tmp_path: Path, lines: list[dict[str, Any]] | None = None
) -> tuple[ModbusDevice, ...]:
    """Devices as the agent builds them: through the configuration loader."""
    document = {
        "gateway": {"site": "test", "id": "gw", "state_dir": str(tmp_path)},
        "lines": lines or [],
        "devices": devices,
    }
    text = yaml.safe_dump(document, sort_keys=False)
    return cfg.loads(text, path=tmp_path / "massgate.yaml").devices


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


def test_planner_merges_bits_in_bit_units_and_keeps_register_flags_with_their_register():
    coils = tuple(
        Point(
            tag=f"d.c{a}",
            table="coil",
            address=a,
            type="bool",
            order="ABCD",
            factor=1.0,
            offset=0.0,
            unit="flag",
        )
        for a in (0, 1, 17, 100, 2500)
    )
    # 0..100 are within 8 registers' worth (128 bits) of each other; 2500 is far away.
    requests = plan(coils, max_registers=125, gap_fill=8)
    assert [(r.start, r.count) for r in requests] == [(0, 101), (2500, 1)]
    flags = tuple(
        Point(
            tag=f"d.s{b}",
            table="holding",
            address=6,
            type="uint16",
            order="ABCD",
            factor=1.0,
            offset=0.0,
            unit="flag",
            bit=b,
        )
        for b in (0, 1, 15)
    )
    (request,) = plan((*flags, _point(0, "int32")), max_registers=125, gap_fill=8)
    assert (request.start, request.count) == (0, 7)
    block = np.zeros(7, dtype=np.uint16)
    block[6] = 0b1000_0000_0000_0010
    (group,) = [g for g in request.groups if g.bits is not None]
    assert codec.decode_bits(block, group.offsets, group.bits).tolist() == [0.0, 1.0, 1.0]


def _every_type_and_order() -> tuple[profiles.Profile, dict[str, float], list[dict[str, Any]]]:
    """A profile with every type in every order, bits, coils and a scaled value; the values
    the simulated slave will serve; and the same map as agent configuration."""
    points: list[profiles.ProfilePoint] = []
    values: dict[str, float] = {}
    yaml_points: list[dict[str, Any]] = []
    address = 0
    for type_name in sorted(SAMPLES):
        for order in codec.ORDERS:
            for i, value in enumerate(SAMPLES[type_name]):
                name = f"{type_name}_{order}_{i}"
                points.append(
                    profiles.ProfilePoint(
                        name=name,
                        table="holding",
                        address=address,
                        type=type_name,
                        order=order,
                        unit="1",
                    )
                )
                yaml_points.append(
                    {
                        "name": name,
                        "address": address,
                        "type": type_name,
                        "order": order,
                        "unit": "1",
                    }
                )
                values[name] = float(value)
                address += codec.width(type_name)
    for name, table, addr, bit, value in (
        ("flag_a", "input", 0, 0, 1.0),
        ("flag_b", "input", 0, 9, 1.0),
        ("flag_c", "input", 0, 15, 0.0),
        ("coil_a", "coil", 3, None, 1.0),
        ("coil_b", "coil", 4, None, 0.0),
        ("coil_c", "coil", 35, None, 1.0),
        ("di_a", "discrete", 0, None, 1.0),
    ):
        bits_table = table in ("coil", "discrete")
        points.append(
            profiles.ProfilePoint(
                name=name,
                table=table,
                address=addr,
                type="bool" if bits_table else "uint16",
                order="ABCD",
                unit="flag",
                bit=bit,
            )
        )
        entry: dict[str, Any] = {"name": name, "table": table, "address": addr}
        if bit is not None:
            entry["bit"] = bit
        yaml_points.append(entry)
        values[name] = value
    # A level in centimetres as int16 counts of 0.1 cm: 1234 counts = 123.4 cm = 1.234 m.
    points.append(
        profiles.ProfilePoint(
            name="scaled",
            table="input",
            address=1,
            type="int16",
            order="ABCD",
            unit="cm",
            scale=0.1,
        )
    )
    yaml_points.append(
        {
            "name": "scaled",
            "table": "input",
            "address": 1,
            "type": "int16",
            "unit": "cm",
            "scale": 0.1,
        }
    )
    values["scaled"] = 1.234
    profile = profiles.Profile("every_type", "test map", tuple(points))
    return profile, values, yaml_points


def test_every_type_and_order_decodes_what_the_simulator_wrote(tmp_path: Path):
    profile, values, points = _every_type_and_order()
    port = free_port()
    (device,) = devices_from(
        [
            {
                "name": "dut",
                "protocol": "modbus_tcp",
                "host": "127.0.0.1",
                "port": port,
                "points": points,
            }
        ],
        tmp_path,
    )

    async def main() -> None:
        slave = MeterSlave(
            Meter("dut", "every_type", lambda: dict(values), "all types"),
            Plant(),
            host="127.0.0.1",
            port=port,
            profile=profile,
        )
        await slave.start()
        try:
            (poller,) = pollers_for((device,), emit=lambda b: None)
            batch = await poller.poll()
            await close_buses([poller])
        finally:
            await slave.stop()
        assert batch.quality is Quality.GOOD, batch.error
        got = {tag.split(".", 1)[1]: v for tag, v in batch.values.items()}
        for name, want in values.items():
            if name == "scaled":
                assert got[name] == pytest.approx(want, rel=1e-12), name
            else:
                assert got[name] == want, name
        # 96 values, 4 tables: the planner reads each table in as few requests as allowed.
        holding_registers = sum(codec.width(p.type) for p in profile.points if p.table == "holding")
        assert poller.bus.stats.requests == -(-holding_registers // 125) + 3

    run_async(main())


def served_devices(served: list[Any], tmp_path: Path) -> tuple[ModbusDevice, ...]:
    """The simulated site's meters as devices over Modbus TCP, through the loader."""
    return devices_from(
        [
            {
                "name": s.meter.name,
                "protocol": "modbus_tcp",
                "host": s.host,
                "port": s.port,
                "profile": s.meter.profile,
            }
            for s in served
        ],
        tmp_path,
    )


def test_poller_reads_the_simulated_meters_in_si(tmp_path: Path):
    async def main() -> None:
        plant = Plant()
        site = SimulatedSite(plant)
        served = await site.start()
        try:
            devices = served_devices(served, tmp_path)
            pollers = pollers_for(devices, emit=lambda b: None)
            for poller, s in zip(pollers, served, strict=True):
                assert len(poller.requests) == 1  # every profile fits one request
                batch = await poller.poll()
                truth = s.meter.read()
                assert batch.quality is Quality.GOOD, batch.error
                for name, value in truth.items():
                    # Rates: float32 on the wire and the meter's noise. Totals and weights:
                    # they move between the poll and this read, by a few kg in a few ms.
                    slack = 0.1 if name.endswith(("_total", "_weight")) else 1e-6
                    assert batch.values[f"{s.meter.name}.{name}"] == pytest.approx(
                        value, rel=2e-3, abs=slack
                    ), name
            await close_buses(pollers)
        finally:
            await site.stop()

    run_async(main())


def test_illegal_address_is_a_fatal_error_naming_the_register():
    async def main() -> None:
        site = SimulatedSite(Plant())
        served = await site.start()
        try:
            s = served[2]  # the temperature transmitter has registers 0..1 only
            device = ModbusDevice(
                name="tt",
                link=TcpLink(host=s.host, port=s.port),
                unit_id=1,
                poll_interval=0.1,
                timeout=1.0,
                points=(_point(40),),
            )
            (poller,) = pollers_for((device,), emit=lambda b: None)
            with pytest.raises(FatalError, match=r"illegal data address.*holding 40\.\.41.*d\.p40"):
                await poller.poll()
            await close_buses([poller])
        finally:
            await site.stop()

    run_async(main())


def test_a_dead_device_gives_bad_batches_not_a_crash():
    async def main() -> None:
        device = ModbusDevice(
            name="gone",
            link=TcpLink(host="127.0.0.1", port=free_port()),
            unit_id=1,
            poll_interval=0.05,
            timeout=0.2,
            points=(_point(0),),
            degraded_interval=0.2,
        )
        batches = []
        (poller,) = pollers_for((device,), emit=batches.append)
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        for _ in range(200):
            if len(batches) >= 5:
                break
            await asyncio.sleep(0.02)
        stop.set()
        await task
        await close_buses([poller])
        assert len(batches) >= 5
        assert all(b.quality is Quality.BAD and math.isnan(b.values["d.p0"]) for b in batches)
        assert "cannot connect" in (batches[0].error or "")
        assert not poller.up
        assert poller.degraded  # three failed polls in a row
        # Once degraded, it is asked every 0.2 s instead of every 0.05 s.
        assert batches[4].mono - batches[3].mono >= 0.19

    run_async(main())


def impatient_tt102(served: list[Any], tmp_path: Path) -> DevicePoller:
    """A poller for the plant's TT-102 that waits 200 ms for a reply and does not retry."""
    s = next(x for x in served if x.meter.name == "tt102")
    (device,) = devices_from(
        [
            {
                "name": "tt102",
                "protocol": "modbus_tcp",
                "host": s.host,
                "port": s.port,
                "profile": "temperature_tx",
                "timeout": "200ms",
                "retries": 0,
            }
        ],
        tmp_path,
    )
    (poller,) = pollers_for((device,), emit=lambda b: None)
    return poller


def test_a_silent_tcp_slave_times_out_and_answers_again(tmp_path: Path):
    from massgate.drivers.sim.faults import Fault

    async def main() -> None:
        plant = Plant()
        site = SimulatedSite(plant)
        served = await site.start()
        try:
            poller = impatient_tt102(served, tmp_path)
            plant.faults.add(Fault(kind="dropout", target="tt102"))
            silent = [await poller.poll() for _ in range(2)]
            plant.faults.clear("tt102")
            back = await poller.poll()
            await close_buses([poller])
        finally:
            await site.stop()
        assert [b.quality for b in silent] == [Quality.BAD, Quality.BAD]
        assert all("no reply" in (b.error or "") for b in silent)
        assert poller.stats.timeouts == 2
        assert back.quality is Quality.GOOD, back.error

    run_async(main())


def test_stuck_values_turn_stale_after_the_configured_time(tmp_path: Path):
    from massgate.drivers.sim.faults import Fault

    async def main() -> None:
        plant = Plant()
        site = SimulatedSite(plant)
        served = await site.start()
        try:
            s = next(x for x in served if x.meter.name == "ft101")
            (device,) = devices_from(
                [
                    {
                        "name": "ft101",
                        "protocol": "modbus_tcp",
                        "host": s.host,
                        "port": s.port,
                        "profile": "coriolis",
                        "stale_after": "300ms",
                    }
                ],
                tmp_path,
            )
            (poller,) = pollers_for((device,), emit=lambda b: None)
            assert (await poller.poll()).quality is Quality.GOOD
            plant.faults.add(Fault(kind="stuck", target="ft101", start=plant.now()))
            qualities = []
            for _ in range(8):
                qualities.append((await poller.poll()).quality)
                await asyncio.sleep(0.1)
            # Identical replies are fine at first; past 300 ms they are STALE.
            assert qualities[0] is Quality.GOOD
            assert qualities[-1] is Quality.STALE
            plant.faults.clear("ft101")
            assert (await poller.poll()).quality is Quality.GOOD
            await close_buses([poller])
        finally:
            await site.stop()

    run_async(main())


ALARM_FLAGS = [
    (meter, profile, p.name, p.alarm)
    for meter, profile in (("ft101", "coriolis"), ("ft102", "magmeter"), ("wt100", "load_cell"))
    for p in profiles.load(profile).points
    if p.alarm is not None
]


def test_each_meter_alarm_flag_sets_the_quality_of_its_reply(tmp_path: Path):
    """Each status flag a profile marks as an alarm, raised by the simulated meter over Modbus
    TCP: the reply is BAD or UNCERTAIN as the profile says, names the flag, and is GOOD again
    once the meter clears it."""
    from massgate.drivers.sim.faults import Fault

    assert len(ALARM_FLAGS) == 9

    async def main() -> None:
        plant = Plant()
        site = SimulatedSite(plant)
        served = await site.start()
        try:
            meters = ("ft101", "ft102", "wt100")
            devices = served_devices([s for s in served if s.meter.name in meters], tmp_path)
            pollers = {p.device.name: p for p in pollers_for(devices, emit=lambda b: None)}
            for meter, profile, flag, alarm in ALARM_FLAGS:
                poller = pollers[meter]
                assert (await poller.poll()).alarms == ()
                fault = plant.faults.add(Fault(kind="alarm", target=meter, point=flag))
                batch = await poller.poll()
                expected = Quality.BAD if alarm == "bad" else Quality.UNCERTAIN
                assert batch.quality is expected, (profile, flag)
                assert batch.alarms == (f"{meter}.{flag}",)
                assert batch.error == f"meter alarm: {meter}.{flag} ({alarm})"
                assert math.isfinite(batch.values[f"{meter}.{flag}"])  # the reading stands
                plant.faults.faults.remove(fault)
                cleared = await poller.poll()
                assert cleared.quality is Quality.GOOD, cleared.error
            # Two at once: the worse quality, both named.
            plant.faults.add(Fault(kind="alarm", target="ft101", point="drive_gain_high"))
            plant.faults.add(Fault(kind="alarm", target="ft101", point="empty_pipe"))
            both = await pollers["ft101"].poll()
            assert both.quality is Quality.BAD
            assert both.alarms == ("ft101.empty_pipe", "ft101.drive_gain_high")
            await close_buses(list(pollers.values()))
        finally:
            await site.stop()

    run_async(main())


def test_a_configured_point_can_be_a_meter_alarm(tmp_path: Path):
    (device,) = devices_from(
        [{"name": "m", "protocol": "modbus_tcp", "host": "127.0.0.1", "profile": "magmeter",
          "points": [{"name": "low_conductivity", "address": 7, "bit": 0, "alarm": "uncertain"},
                     {"name": "empty_pipe", "address": 9, "bit": 4}]}],
        tmp_path,
    )  # fmt: skip
    alarms = {p.tag: p.alarm for p in device.points if p.alarm is not None}
    # The profile's empty_pipe is replaced by the configured point, which is no alarm.
    assert alarms == {
        "m.coil_fault": "bad",
        "m.electrode_fault": "bad",
        "m.flow_over_range": "uncertain",
        "m.low_conductivity": "uncertain",
    }
    with pytest.raises(cfg.ConfigError, match="'fatal' is not one of bad, uncertain"):
        devices_from(
            [{"name": "m", "protocol": "modbus_tcp", "host": "127.0.0.1",
              "points": [{"name": "x", "address": 7, "bit": 0, "alarm": "fatal"}]}],
            tmp_path,
        )  # fmt: skip


def test_a_meter_without_the_profiles_status_register_leaves_its_flags_out(tmp_path: Path):
    """An older Coriolis meter whose map ends at its totalizer: its status flags are left out,
    so nothing past register 11 is read (such a meter answers 'illegal address' there)."""
    flags = ["empty_pipe", "sensor_fault", "drive_gain_high", "flow_over_range"]
    (device,) = devices_from(
        [{"name": "m", "protocol": "modbus_tcp", "host": "127.0.0.1", "profile": "coriolis",
          "without": flags}],
        tmp_path,
    )  # fmt: skip
    assert [p.tag for p in device.points] == [
        "m.mass_flow", "m.density", "m.temperature", "m.volume_flow", "m.mass_total",
    ]  # fmt: skip
    (request,) = plan(device.points, max_registers=125, gap_fill=8)
    assert request.start + request.count == 12
    for without, message in (
        (["empty_pipes"],
         "profile coriolis has no point 'empty_pipes'. Did you mean 'empty_pipe'?"),
        ([*flags, "mass_flow", "density", "temperature", "volume_flow", "mass_total"],
         "leaves out every point"),
    ):  # fmt: skip
        with pytest.raises(cfg.ConfigError, match=re.escape(message)):
            devices_from(
                [{"name": "m", "protocol": "modbus_tcp", "host": "127.0.0.1",
                  "profile": "coriolis", "without": without}],
                tmp_path,
            )  # fmt: skip
