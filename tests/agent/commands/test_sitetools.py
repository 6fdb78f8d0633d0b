"""`massgate probe` and `massgate scan` against simulated slaves, and their error messages."""

from __future__ import annotations

import serial

from massgate.agent.commands.cli import main
from massgate.drivers.modbus.model import SerialLink, TcpLink
from massgate.drivers.modbus.probe import probe, scan
from massgate.drivers.sim.plant import Plant
from massgate.drivers.sim.ptypair import PtyPair
from massgate.drivers.sim.server import SerialSlaves, SimulatedSite, meters_of
from tests.conftest import free_port, run_async


def test_scan_finds_exactly_the_slaves_on_the_line():
    async def main_() -> list[int]:
        plant = Plant()
        meters = {m.name: m for m in meters_of(plant)}
        with PtyPair() as (master, slave_end):
            slaves = SerialSlaves(slave_end, {1: meters["ft101"], 3: meters["tt102"]}, plant)
            await slaves.start()
            try:
                found = await scan(
                    SerialLink(name="l", port=master),
                    range(1, 6),
                    table="holding",
                    address=0,
                    reply_timeout=0.15,
                )
            finally:
                await slaves.stop()
        assert all(a.reply == "registers" for a in found)
        return [a.unit_id for a in found]

    assert run_async(main_()) == [1, 3]


def test_probe_decodes_a_load_cell_as_the_device_states_it():
    async def main_() -> None:
        plant = Plant()
        site = SimulatedSite(plant)
        served = await site.start()
        try:
            s = next(x for x in served if x.meter.name == "wt100")
            from massgate.agent.commands.sitetools import _points

            class Args:
                profile = "load_cell"

            points, factors = _points(Args())  # type: ignore[arg-type]
            readings = await probe(
                TcpLink(host=s.host, port=s.port), 1, points, factors, reply_timeout=1.0
            )
        finally:
            await site.stop()
        by_name = {r.point.tag.split(".", 1)[1]: r for r in readings}
        assert by_name["tare"].value == 850.0  # 85000 counts of 0.01 kg
        assert by_name["tare"].words == (0x0001, 0x4C08)
        assert abs(by_name["net_weight"].value - plant.mass_in("T-100")) < 5.0
        assert by_name["stable"].value in (0.0, 1.0)
        assert set(by_name["gross_weight"].other_orders) == {"CDAB", "BADC", "DCBA"}
        assert by_name["stable"].other_orders == {}

    run_async(main_())


def test_probe_says_why_a_port_cannot_be_used(capsys):
    assert main(["probe", "--serial", "/dev/ttyMASSGATE-NONE", "--profile", "coriolis"]) == 1
    assert "no such device" in capsys.readouterr().err

    port = free_port()
    assert main(["probe", "--host", "127.0.0.1", "--port", str(port), "--register", "0"]) == 1
    assert f"cannot connect to 127.0.0.1:{port}" in capsys.readouterr().err

    assert main(["probe", "--host", "127.0.0.1"]) == 2
    assert "give --profile NAME or --register ADDRESS" in capsys.readouterr().err

    with PtyPair() as (master, _), serial.Serial(master, exclusive=True):
        assert main(["probe", "--serial", master, "--profile", "coriolis"]) == 1
        assert "port busy" in capsys.readouterr().err


def test_scan_reports_a_silent_line(capsys):
    with PtyPair() as (master, _):
        code = main(["scan", "--serial", master, "--units", "1-3", "--timeout", "0.05"])
    assert code == 1
    assert "no unit answered (units 1-3, holding 0)" in capsys.readouterr().err
