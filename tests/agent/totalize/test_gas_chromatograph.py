"""A gas whose composition a chromatograph analyzes, live over Modbus: each good analysis is
the gas from then on; one that does not sum to 1, or comes from an analyzer that is faulted,
calibrating or silent, is refused and the last good one kept, every density flagged."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from massgate.agent import config as config_module
from massgate.agent.core.samples import Batch, Quality
from massgate.agent.core.yamlsource import ConfigError
from massgate.agent.runtime.gateway import Gateway
from massgate.agent.store.outbox import Outbox
from massgate.agent.totalize import gas
from massgate.agent.totalize.hourly import HOUR
from massgate.drivers.modbus.poller import close_buses, pollers_for
from massgate.drivers.sim import plant as plant_module
from massgate.drivers.sim import plantspec
from massgate.drivers.sim.faults import Fault
from massgate.drivers.sim.plant import Plant
from massgate.drivers.sim.server import SimulatedSite
from tests.conftest import run_async

pytest.importorskip("pyaga8", reason="no pyaga8 wheel for this machine (see gas.py)")

PLANT = (
    (Path(plantspec.__file__).parent / "plant.yaml")
    .read_text()
    .replace(
        "  - {name: lt100,",
        "  - {name: gc1, profile: gas_chromatograph, line: feed, accuracy: 0.01 %}\n"
        "  - {name: lt100,",
    )
)
CONFIG = """\
gateway: {site: s, id: g, state_dir: state}
devices:
  - {name: gc1, protocol: modbus_tcp, host: 127.0.0.1, port: PORT, profile: gas_chromatograph}
  - {name: fm, protocol: modbus_tcp, host: 127.0.0.1, port: 1, profile: magmeter}
  - {name: tt, protocol: modbus_tcp, host: 127.0.0.1, port: 2, profile: temperature_tx}
  - {name: pt, protocol: modbus_tcp, host: 127.0.0.1, port: 3, profile: pressure_tx}
streams:
  - name: gas
    volume_flow: fm.volume_flow
    accuracy: 1 %
    max_gap: 1 h
    density: {model: gas, equation: gerg2008, composition: gc1, temperature: tt.temperature,
              pressure: pt.pressure, pressure_absolute: true}
"""
T, P = 288.15, 50e5  # the line: 15 °C, 50 bar absolute
FLOW = 0.01  # m³/s


def test_each_good_analysis_is_the_gas_and_a_bad_one_keeps_the_last_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    # The analyzer's gas is the sim's module-level GC_GAS: changed here on a copy, put back.
    monkeypatch.setattr(plant_module, "GC_GAS", dict(plant_module.GC_GAS))
    plant = Plant(plantspec.loads(PLANT, filename="plant.yaml"))
    site = SimulatedSite(plant)
    clock = [HOUR * 500_000]  # wall and monotonic: whole hours from here

    async def main() -> None:
        served = await site.start()
        try:
            gc_port = next(s.port for s in served if s.meter.name == "gc1")
            path = tmp_path / "c.yaml"
            path.write_text(CONFIG.replace("PORT", str(gc_port)))
            config = config_module.load(path)
            gateway = Gateway(config, Outbox(":memory:", max_bytes=10**7, site="s", gateway="g"))
            (poller,) = pollers_for(config.devices[:1], emit=lambda b: None)
            stream = gateway.streams["gas"]

            def second(analyze: bool) -> None:
                """One second of the line, and the analyzer asked first when `analyze`."""
                clock[0] += 1.0
                now = clock[0]
                for device, tag, value in (
                    ("tt", "tt.temperature", T), ("pt", "pt.pressure", P),
                    ("fm", "fm.volume_flow", FLOW),
                ):  # fmt: skip
                    gateway.ingest(Batch(device, now, now, {tag: value}, Quality.GOOD))
                gateway.cycle(now, now)

            async def seconds(n: int) -> float:
                """Mass integrated over n seconds, the analyzer polled before each."""
                before = stream.net
                for _ in range(n):
                    batch = await poller.poll()
                    gateway.ingest(
                        Batch(batch.device, clock[0], clock[0], batch.values, batch.quality,
                              batch.error, batch.alarms)
                    )  # fmt: skip
                    second(analyze=True)
                return stream.net - before

            # Before any analysis: no density, so no mass, and said.
            second(analyze=False)
            second(analyze=False)
            assert stream.net == 0.0
            assert "gas: no composition from gc1 yet" in stream.density_flags

            first = gas.Composition.parse(plant_module.GC_GAS)
            rho = gas.Gas("gerg2008", first).state(T, P).density
            await seconds(1)  # bridges the seconds without a density (max_gap: estimated)
            moved = await seconds(10)
            assert stream.composition is not None
            # float32 on the wire: 7 digits of each mole percent
            assert stream.composition.fractions == pytest.approx(first.fractions, abs=1e-7)
            assert moved == pytest.approx(10 * FLOW * rho, rel=1e-6)

            # The analyzer drifts 5 % high: refused, the last good one kept and flagged.
            fault = plant.faults.add(Fault(kind="bias", target="gc1", magnitude=0.05))
            with caplog.at_level(logging.INFO):
                moved = await seconds(5)
            assert moved == pytest.approx(5 * FLOW * rho, rel=1e-6)
            kept = "gas: the last good analysis from gc1 is kept (the latest is refused)"
            assert stream.density_flags[kept] == 5
            plant.faults.faults.remove(fault)

            # Calibrating: the analyzer reports its calibration gas, which is not the
            # process gas (and sums to 1): its flag, not its sum, refuses it.
            plant.faults.add(Fault(kind="alarm", target="gc1", point="calibrating"))
            process_gas = dict(plant_module.GC_GAS)
            plant_module.GC_GAS.clear()
            plant_module.GC_GAS.update(
                methane=0.7, ethane=0.1, propane=0.05, nitrogen=0.1, carbon_dioxide=0.05
            )
            with caplog.at_level(logging.INFO):
                moved = await seconds(3)
                assert moved == pytest.approx(3 * FLOW * rho, rel=1e-6)
                assert stream.density_flags[kept] == 5 + 3
                plant_module.GC_GAS.clear()
                plant_module.GC_GAS.update(process_gas)
                plant.faults.clear("gc1")

                # Back, with a richer gas: the density follows it.
                monkeypatch.setitem(plant_module.GC_GAS, "methane", 0.88)
                monkeypatch.setitem(plant_module.GC_GAS, "ethane", 0.07)
                richer = gas.Composition.parse(plant_module.GC_GAS)
                rho_richer = gas.Gas("gerg2008", richer).state(T, P).density
                await seconds(1)  # trapezoids: half of this second is still the old gas's
                moved = await seconds(4)
            assert rho_richer > rho * 1.01
            assert moved == pytest.approx(4 * FLOW * rho_richer, rel=1e-6)
            said = [m for r in caplog.records if "gc1" in (m := r.getMessage())]
            assert said == [
                "stream gas: gas: no composition from gc1 yet",
                # Once for the spell, not at every poll, and once for each alarm.
                "gc1: analysis refused (the mole fractions sum to 1.05, not 1 (within 0.0001)); "
                "the last good one is kept",
                f"stream gas: {kept}",
                "gc1: meter alarm gc1.calibrating (bad): its analysis is not used",
                "gc1: meter alarm gc1.calibrating cleared",
                "gc1: analysis accepted again",
            ]

            # The hour's standard volume: at the analysis in force, Z from the same equation.
            clock[0] = (math.floor(clock[0] / HOUR) + 1) * HOUR + 1.0
            second(analyze=False)
            (hour,) = [r.body for r in gateway.pending if r.kind == "hourly"]
            base = gas.Gas("gerg2008", richer).state(288.15, 101325.0).density
            assert hour["standard_volume_m3"] == pytest.approx(hour["quantity_kg"] / base, rel=1e-5)
            await close_buses([poller])
        finally:
            await site.stop()

    run_async(main())


@pytest.mark.parametrize(
    "change",
    [
        ("composition: gc1,", "composition: gc2,"),
        ("profile: gas_chromatograph}", "profile: temperature_tx}"),
    ],
)
def test_a_live_composition_names_an_analyzer_that_exists(tmp_path: Path, change):
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.replace("PORT", "5020").replace(*change))
    with pytest.raises(ConfigError) as caught:
        config_module.load(path)
    expected = (
        "composition: no device 'gc2' to analyze the gas. Did you mean 'gc1'?"
        if change[1].startswith("composition")
        else "composition: device 'gc1' has no point named after an AGA8 component"
    )
    assert expected in str(caught.value)
    assert "streams[0].density" in str(caught.value)


def test_an_inventory_takes_a_fixed_composition_only(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(
        CONFIG.replace("PORT", "5020").replace(
            "  - {name: pt,",
            "  - {name: lt, protocol: modbus_tcp, host: 127.0.0.1, port: 4, profile: level_radar}\n"
            "  - {name: pt,",
        )
        + "inventories:\n  - {name: v, level: lt.level, area: 1 m2, accuracy: 1 mm, density: "
        "{model: gas, composition: gc1, temperature: tt.temperature}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        config_module.load(path)
    assert "a live composition is for a stream's gas; give an inventory a fixed one" in str(
        caught.value
    )
