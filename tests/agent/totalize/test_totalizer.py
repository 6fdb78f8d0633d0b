"""Totalizer configuration to kilograms: registers, meter factors, reverse flow, strapping
tables, load cells, hourly quantity records, and the audit log of parameter changes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from massgate.agent import config as config_module
from massgate.agent.core.yamlsource import ConfigError
from massgate.agent.runtime.gateway import Gateway
from massgate.agent.store.outbox import Outbox
from massgate.agent.totalize import kernels
from massgate.agent.totalize.hourly import HOUR
from massgate.agent.totalize.inventories import InventoryGauge
from massgate.agent.totalize.streams import StreamTotal

DEVICES = """\
gateway: {site: a, id: b, state_dir: state}
devices:
  - {name: cm, protocol: modbus_tcp, host: 127.0.0.1, profile: coriolis}
  - {name: fm, protocol: modbus_tcp, host: 127.0.0.1, port: 5021, profile: magmeter}
  - {name: tt, protocol: modbus_tcp, host: 127.0.0.1, port: 5022, profile: temperature_tx}
  - {name: pt, protocol: modbus_tcp, host: 127.0.0.1, port: 5023, profile: pressure_tx}
  - {name: wt, protocol: modbus_tcp, host: 127.0.0.1, port: 5024, profile: load_cell}
  - name: lt
    protocol: modbus_tcp
    host: 127.0.0.1
    port: 5025
    points:
      - {name: level, table: input, address: 0, type: uint16, unit: mm}
      - {name: counter, table: input, address: 2, type: uint32, unit: kg, scale: 0.1}
"""

HOUR0 = 1_800_000_000.0 - 1_800_000_000.0 % HOUR  # a wall time at a whole hour


def _load(tmp_path: Path, body: str) -> config_module.Config:
    path = tmp_path / "c.yaml"
    path.write_text(DEVICES + body)
    return config_module.load(path)


def _problems(tmp_path: Path, body: str) -> str:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, body)
    return str(caught.value)


# --- configuration ------------------------------------------------------------------------


def test_register_rollover_comes_from_the_register_type(tmp_path: Path):
    config = _load(
        tmp_path,
        "streams:\n"
        "  - {name: a, mass_total: lt.counter, max_flow: 50 kg/s, accuracy: 0.1 %}\n"
        "  - {name: b, mass_total: cm.mass_total, max_flow: 180 t/h, accuracy: 0.1 %}\n"
        "  - {name: c, mass_total: cm.mass_total, max_flow: 50 kg/s, rollover: 1000 t,"
        " accuracy: 0.1 %}\n",
    )
    a, b, c = config.streams
    assert a.rollover == pytest.approx(2**32 * 0.1)  # uint32 counts of 0.1 kg
    assert b.rollover == math.inf
    assert b.max_flow == pytest.approx(50.0)
    assert c.rollover == 1e6


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "streams:\n  - {name: a, mass_total: cm.mass_total, accuracy: 0.1 %}\n",
            "needs 'max_flow'",
        ),
        (
            "streams:\n  - {name: a, mass_flow: cm.mass_flow, max_flow: 1 kg/s, accuracy: 1 %}\n",
            "applies to a 'mass_total' register only",
        ),
        (
            "streams:\n  - {name: a, mass_flow: cm.mass_flow, mass_total: cm.mass_total,"
            " accuracy: 1 %}\n",
            "give one of mass_flow / mass_total, not 2",
        ),
        (
            "streams:\n  - {name: a, mass_total: cm.mass_flow, max_flow: 1 kg/s, accuracy: 1 %}\n",
            "a mass is needed here",
        ),
        (
            "streams:\n  - {name: a, mass_flow: cm.mass_flow, meter_factor: 10, accuracy: 1 %}\n",
            "a meter factor is close to 1",
        ),
        (
            "streams:\n  - {name: a, mass_flow: cm.mass_flow, reverse: subtract, accuracy: 1 %}\n",
            "reverse",
        ),
        (
            "streams:\n  - name: a\n    volume_flow: fm.volume_flow\n    accuracy: 1 %\n"
            "    density: {reference: 998 kg/m3, at: 20 degC, expansion: 2e-4 1/K,"
            " temperature: tt.temperature, compressibility: 4.6e-10 1/Pa}\n",
            "needs a 'pressure' tag",
        ),
        (
            "inventories:\n  - {name: v, mass: wt.net_weight, area: 2 m2, accuracy: 1 kg}\n",
            "load cells give mass directly",
        ),
        (
            "inventories:\n  - name: v\n    level: lt.level\n    accuracy: 2 mm\n"
            "    density: {model: constant, reference: 998 kg/m3}\n",
            "needs 'area' (vertical, constant section) or 'strapping'",
        ),
        (
            "inventories:\n  - name: v\n    level: lt.level\n    accuracy: 2 mm\n"
            "    density: {model: constant, reference: 998 kg/m3}\n"
            "    strapping: {level_unit: mm, volume_unit: m3,"
            " table: [[0, 0], [500, 2], [400, 3]]}\n",
            "levels must rise strictly",
        ),
        (
            "inventories:\n  - name: v\n    level: lt.level\n    accuracy: 2 mm\n"
            "    density: {model: constant, reference: 998 kg/m3}\n"
            "    strapping: {level_unit: kg, volume_unit: m3, table: [[0, 0], [500, 2]]}\n",
            "but a length is expected",
        ),
        (
            "inventories:\n  - {name: v, accuracy: 1 mm}\n",
            "needs 'level' (a tank), 'mass' (load cells) or 'count'",
        ),
    ],
)
def test_bad_totalizer_keys_are_refused_with_the_reason(tmp_path: Path, body: str, message: str):
    problems = _problems(tmp_path, body)
    assert message in problems
    assert "c.yaml:" in problems


# --- streams ------------------------------------------------------------------------------


def _stream(tmp_path: Path, line: str) -> StreamTotal:
    return StreamTotal(_load(tmp_path, f"streams:\n  - {line}\n").streams[0])


def test_register_stream_counts_rollover_and_refuses_a_reset(tmp_path: Path):
    stream = _stream(
        tmp_path, "{name: a, mass_total: lt.counter, max_flow: 50 kg/s, accuracy: 0.1 %}"
    )
    top = 2**32 * 0.1
    readings = [top - 30.0, top - 10.0, 10.0, 30.0, 0.0, 20.0]  # wraps, then a meter reset
    for i, value in enumerate(readings):
        stream.add(float(i), HOUR0 + i, value)
    stream.integrate()
    assert stream.net == pytest.approx(20.0 + 20.0 + 20.0 + 20.0)
    assert stream.state[kernels.FAULTS] == 1.0
    assert math.isnan(stream.last_flow)


def test_meter_factor_scales_the_quantity(tmp_path: Path):
    stream = _stream(
        tmp_path, "{name: a, mass_flow: cm.mass_flow, meter_factor: 1.0025, accuracy: 0.1 %}"
    )
    for i in range(11):
        stream.add(float(i), HOUR0 + i, 2.0)
    stream.integrate()
    assert stream.net == pytest.approx(20.0 * 1.0025, rel=1e-12)


@pytest.mark.parametrize(("mode", "net"), [("separate", 10.5 - 4.5), ("ignore", 10.5)])
def test_reverse_flow_by_configuration(tmp_path: Path, mode: str, net: float):
    stream = _stream(
        tmp_path, f"{{name: a, mass_flow: cm.mass_flow, reverse: {mode}, accuracy: 0.1 %}}"
    )
    for i, q in enumerate([1.0] * 11 + [-1.0] * 5):  # 10 s forward; 1 s across zero; 4 s back
        stream.add(float(i), HOUR0 + i, q)
    stream.integrate()
    assert stream.forward == pytest.approx(10.5)
    assert stream.reverse == pytest.approx(4.5)
    assert stream.net == pytest.approx(net)


def test_volume_stream_with_compressibility_matches_the_model(tmp_path: Path):
    stream = _stream(
        tmp_path,
        "name: a\n    volume_flow: fm.volume_flow\n    accuracy: 0.5 %\n"
        "    density: {reference: 998.2 kg/m3, at: 20 degC, expansion: 2.1e-4 1/K,"
        " temperature: tt.temperature, pressure: pt.pressure, compressibility: 4.6e-10 1/Pa}",
    )
    for i in range(11):
        stream.add(float(i), HOUR0 + i, 0.001, 333.15, 40e5)
    stream.integrate()
    rho = 998.2 / ((1 + 2.1e-4 * 40.0) * (1 - 4.6e-10 * 40e5))
    assert stream.net == pytest.approx(0.01 * rho, rel=1e-12)


# --- hourly records -----------------------------------------------------------------------


def _volume_stream(tmp_path: Path) -> StreamTotal:
    return _stream(
        tmp_path,
        "name: a\n    volume_flow: fm.volume_flow\n    accuracy: 0.5 %\n"
        "    density: {reference: 1000 kg/m3, at: 20 degC, expansion: 2e-4 1/K,"
        " temperature: tt.temperature}",
    )


def test_hours_add_up_to_the_total_and_average_by_flow(tmp_path: Path):
    stream = _volume_stream(tmp_path)
    # Three hours at 1 s: in the first half of each hour 2 L/s at 30 °C, then 1 L/s at 10 °C.
    seconds = np.arange(0, 3 * 3600 + 1, 1.0)
    for chunk in np.array_split(seconds, 37):  # cycles of ~5 min, not aligned to the hour
        for s in chunk:
            first_half = (s % HOUR) < HOUR / 2
            stream.add(
                s, HOUR0 + s, 0.002 if first_half else 0.001, 303.15 if first_half else 283.15
            )
        stream.integrate()
    hours = stream.take_hours()
    assert [h["hour_start"] for h in hours] == [
        "2027-01-15T08:00:00.000000Z",
        "2027-01-15T09:00:00.000000Z",
        "2027-01-15T10:00:00.000000Z",
    ]
    # The hours add up to the non-resettable total at the last close.
    assert sum(h["quantity_kg"] for h in hours) == pytest.approx(
        kernels.total(stream.hour.opened, kernels.FORWARD),
        abs=1e-5,  # records round to the milligram
    )
    assert hours[-1]["forward_total_kg"] == pytest.approx(
        kernels.total(stream.hour.opened, kernels.FORWARD)
    )
    # Flow-weighted: 2 parts at 30 °C per 1 part at 10 °C (the mass weights differ by ρ).
    rho_hot = 1000 / (1 + 2e-4 * 10)
    rho_cold = 1000 / (1 - 2e-4 * 10)
    w_hot, w_cold = 0.002 * rho_hot, 0.001 * rho_cold
    expected = (w_hot * 303.15 + w_cold * 283.15) / (w_hot + w_cold)
    for hour in hours[1:]:  # the first hour starts with the first sample, like the others
        assert hour["temperature_K"] == pytest.approx(expected, abs=2e-3)
        assert hour["faulted_s"] == pytest.approx(0.0, abs=1.0)
        assert hour["flow_time_s"] == pytest.approx(3600.0, abs=1.0)
        assert hour["pressure_Pa"] is None
        assert hour["quantity_kg"] == pytest.approx(1800 * (w_hot + w_cold), rel=1e-4)


def test_an_hour_without_data_is_faulted_and_a_restart_continues_its_hour(tmp_path: Path):
    stream = _volume_stream(tmp_path)
    for s in range(0, 1801):  # half an hour of data, then the agent stops
        stream.add(float(s), HOUR0 + s, 0.001, 293.15)
    stream.integrate()
    saved = stream.saved()
    again = StreamTotal(stream.config, saved=saved)
    for s in range(2400, 3 * 3600 + 1):  # back 10 min later; then an hour of silence
        if HOUR0 + s < HOUR0 + 2 * HOUR or HOUR0 + s >= HOUR0 + 3 * HOUR:
            again.add(float(s), HOUR0 + s, 0.001, 293.15)  # one boot: monotonic goes on
        if s % 300 == 0:
            again.integrate()
            again.roll_hour(HOUR0 + s)
    hours = again.take_hours()
    assert len(hours) == 3
    first, second, silent = hours
    # The first hour is one hour across the restart: 1800 s of data before, 1199 s after
    # (an interval belongs to the hour its closing sample is in, so 3599 → 3600 s is the
    # next hour's), the rest down.
    assert first["quantity_kg"] == pytest.approx((1800 + 1199) * 1.0, rel=1e-9)
    assert first["faulted_s"] == pytest.approx(601.0)
    assert second["quantity_kg"] == pytest.approx(3600.0, rel=1e-9)
    assert silent["quantity_kg"] == 0.0
    assert silent["faulted_s"] == 3600.0
    assert silent["faulted_share"] == 1.0


def test_downtime_is_measured_by_the_monotonic_clock_within_one_boot(tmp_path: Path):
    """The wall clock stepped back an hour while the agent was down for 600 s: the gap is
    600 s by the monotonic clock, which does not step."""
    stream = _volume_stream(tmp_path)
    for s in range(0, 1801):
        stream.add(float(s), HOUR0 + s, 0.001, 293.15)
    stream.integrate()
    stream.close_period()
    again = StreamTotal(stream.config, saved=stream.saved())
    for s in range(2400, 2461):
        again.add(float(s), HOUR0 - 3600 + s, 0.001, 293.15)
    again.integrate()
    assert again.close_period().gap_time == pytest.approx(600.0)


def test_a_wall_clock_earlier_after_a_reboot_makes_the_downtime_unknown_not_zero(
    tmp_path: Path,
):
    """A Raspberry Pi without RTC boots at an old time: how long it was down is unknown, and
    the totals record says gap_s null instead of a clamped 0 that hides the downtime."""
    stream = _volume_stream(tmp_path)
    for s in range(0, 1801):
        stream.add(float(s), HOUR0 + s, 0.001, 293.15)
    stream.integrate()
    stream.close_period()
    saved = {**stream.saved(), "boot_id": "another boot"}
    again = StreamTotal(stream.config, saved=saved)
    for s in range(0, 61):  # a new boot: monotonic from 0, the wall clock 20 min behind
        again.add(float(s), HOUR0 + 600 + s, 0.001, 293.15)
    again.integrate()
    period = again.close_period()
    assert math.isnan(period.gap_time)
    assert period.mass == pytest.approx(60.0)
    assert again.close_period().gap_time == 0.0  # the next period is known again


# --- inventories --------------------------------------------------------------------------


def test_strapping_table_and_load_cells(tmp_path: Path):
    config = _load(
        tmp_path,
        "inventories:\n"
        "  - name: horizontal\n    level: lt.level\n    accuracy: 2 mm\n"
        "    density: {model: constant, reference: 800 kg/m3}\n"
        "    strapping:\n      level_unit: mm\n      volume_unit: m3\n"
        "      table: [[0, 0], [500, 1.8], [1000, 3.9], [2000, 8.2]]\n"
        "  - {name: silo, mass: wt.net_weight, accuracy: 5 kg}\n",
    )
    tank, silo = (InventoryGauge(v) for v in config.inventories)
    tank.update(1.0, 0.75)
    assert tank.mass == pytest.approx(800 * (1.8 + 0.5 * 2.1))
    assert tank.sigma == pytest.approx(800 * (2.1 / 0.5) * 0.002 / 2)  # local slope dV/dh
    tank.update(2.0, 2.5)  # above the table: no mass is guessed
    assert tank.mass == pytest.approx(800 * 2.85)
    assert tank.out_of_table == 1
    silo.update(1.0, 12_345.6)
    assert silo.mass == 12_345.6
    assert silo.sigma == 2.5


# --- audit log and archive ----------------------------------------------------------------


AUDITED = """\
streams:
  - {name: feed, mass_flow: cm.mass_flow, accuracy: 0.1 %, meter_factor: FACTOR}
outbox: {path: state.sqlite}
"""


def test_a_changed_meter_factor_is_audited_with_old_and_new_values(tmp_path: Path):
    def start(factor: str) -> Outbox:
        config = _load(tmp_path, AUDITED.replace("FACTOR", factor))
        outbox = Outbox(config.outbox.path, max_bytes=10**7, site="a", gateway="b")
        Gateway(config, outbox)
        return outbox

    outbox = start("1.0")
    first = outbox.archived("audit")
    assert len(first) == 1
    assert first[0]["baseline"] is True
    outbox.ack(m.seq for m in outbox.take(10))  # the broker has it: the archive keeps it
    outbox.close()
    outbox = start("1.0")  # unchanged: nothing to record
    assert len(outbox.archived("audit")) == 1
    outbox.close()
    outbox = start("1.0012")
    entries = outbox.archived("audit")
    assert len(entries) == 2
    assert entries[1]["baseline"] is False
    assert entries[1]["changes"] == [
        {"item": "stream feed", "key": "meter_factor", "old": 1.0, "new": 1.0012}
    ]
    assert [m.topic.rsplit("/", 1)[1] for m in outbox.take(10)] == ["audit"]
    outbox.close()


def test_hourly_records_reach_the_outbox_and_stay_in_the_archive(tmp_path: Path):
    config = _load(tmp_path, AUDITED.replace("FACTOR", "1.0"))
    outbox = Outbox(":memory:", max_bytes=10**7, site="a", gateway="b")
    gateway = Gateway(config, outbox)
    stream = gateway.streams["feed"]
    for s in range(0, 3600, 2):
        stream.add(float(s), HOUR0 + 1800 + s, 1.0)
        gateway.cycle(float(s), HOUR0 + 1800 + s)
    records, totals = gateway.take_pending(3600.0)
    outbox.put(records, totals=totals)
    hourly = outbox.archived("hourly")
    assert [h["quantity_kg"] for h in hourly] == [pytest.approx(1798.0)]
    assert hourly[0]["faulted_s"] == pytest.approx(1802.0)  # the agent started at half past
    outbox.ack(m.seq for m in outbox.take(10_000))
    assert outbox.depth() == 0
    assert len(outbox.archived("hourly")) == 1
    assert outbox.prune_archive("hourly", before=math.inf) == 1
    assert len(outbox.archived("audit")) == 1  # pruning one kind keeps the other


def test_a_gas_stream_states_its_hour_in_standard_volume(tmp_path: Path):
    from massgate.agent.totalize import density

    stream = _stream(
        tmp_path,
        "name: g\n    volume_flow: fm.volume_flow\n    accuracy: 1 %\n"
        "    density: {model: gas, molar_mass: 16.04 g/mol, z: 0.95,"
        " temperature: tt.temperature, pressure: pt.pressure,"
        " standard: {temperature: 0 degC, pressure: 101.325 kPa}}",
    )
    for s in range(0, 3601):
        stream.add(float(s), HOUR0 + s, 0.01, 293.15, 40e5)
    stream.integrate()
    stream.roll_hour(HOUR0 + HOUR + 1)
    (hour,) = stream.take_hours()
    line = density.gas(293.15, 40e5 + 101325, molar_mass=0.01604, z=0.95).value
    standard = density.gas(273.15, 101325.0, molar_mass=0.01604, z=1.0).value
    # 3599 one-second intervals end inside the hour; the one ending at HOUR0 + 3600 is the next's.
    assert hour["quantity_kg"] == pytest.approx(0.01 * 3599 * line, rel=1e-9)
    assert hour["standard_volume_m3"] == pytest.approx(0.01 * 3599 * line / standard, rel=1e-6)
    assert hour["standard_conditions"] == {"temperature_K": 273.15, "pressure_Pa": 101325.0}
    assert hour["pressure_Pa"] == pytest.approx(40e5)
    assert hour["density_kg_m3"] == pytest.approx(line)


def test_an_unwritable_numba_cache_is_said_at_start(tmp_path: Path, monkeypatch, caplog):
    from massgate.agent.commands import run as cli

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(blocker / "numba"))  # under a file: unwritable
    with caplog.at_level("WARNING"):
        cli._check_numba_cache()
    assert "is not writable" in caplog.text
    caplog.clear()
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "cache"))
    with caplog.at_level("WARNING"):
        cli._check_numba_cache()
    assert caplog.text == ""
    assert (tmp_path / "cache").is_dir()


def test_an_hour_the_wall_clock_stepped_back_in_says_so(tmp_path: Path):
    """The clock went back 20 min at half past: the open hour runs on for 80 min of flow,
    and its record says clock_stepped rather than passing 80 min off as an hour."""
    stream = _volume_stream(tmp_path)
    for s in range(0, 3 * 3600 + 1):
        wall = HOUR0 + s - (1200 if s >= 1800 else 0)
        stream.add(float(s), wall, 0.001, 293.15)
        if s % 300 == 0:
            stream.integrate()
            stream.roll_hour(wall)
    hours = stream.take_hours()
    assert [h["clock_stepped"] for h in hours[:2]] == [True, False]
    assert hours[0]["quantity_kg"] == pytest.approx(4800.0, rel=1e-3)  # 80 min at 1 kg/s


def test_the_first_totals_after_a_restart_cover_the_mass_they_carry(tmp_path: Path):
    """50 kg integrated before a crash and 5 kg after: the period starts at the previous
    totals record, not at the restart (55 kg over a stated 5 s read as 11 kg/s)."""
    stream = _volume_stream(tmp_path)
    for s in range(0, 51):
        stream.add(float(s), HOUR0 + s, 0.001, 293.15)
    stream.integrate()
    assert stream.close_period().end_wall == HOUR0 + 50
    for s in range(51, 101):
        stream.add(float(s), HOUR0 + s, 0.001, 293.15)
    stream.integrate()
    again = StreamTotal(stream.config, saved=stream.saved())  # the crash: saved, not reported
    for s in range(200, 206):
        again.add(float(s), HOUR0 + s, 0.001, 293.15)
    again.integrate()
    period = again.close_period()
    assert period.mass == pytest.approx(55.0)
    assert period.start_wall == HOUR0 + 50
    assert period.end_wall == HOUR0 + 205
