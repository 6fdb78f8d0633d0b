"""A plant that moves real (simulated) mass and knows exactly how much.

The plant is a PlantSpec (plantspec.py, from YAML): vessels, lines whose pumps move fluid
between them or across the plant's boundary, meters on lines and vessels. Flows are smooth
functions of time, integrated in small steps: "truth" is this integral, which the agent's
kilograms are held to. A meter's reading adds its noise to the true value at the instant of
the read, so the agent sees what a real meter would say.

A leak on a line loses mass that no meter sees, on the side of the line inside the plant:
a line out of a vessel draws the leak from that vessel on top of what its pump delivers; a
line from outside delivers less than its pump (and its meter) moved.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np

from .. import profiles
from .faults import Fault, Faults
from .plantspec import OUTSIDE, MeterSpec, PlantSpec, builtin

STEP = 0.005  # s, integration step of the truth
RECORD_EVERY = 0.05  # s between points of the truth's history
HISTORY = 3600.0  # s of history kept for truth_between
GRAVITY = 9.80665  # m/s²
STABLE_RATE = 0.2  # kg/s: a load cell indicator calls its weight stable below this rate


@cache
def _builtin() -> PlantSpec:
    return builtin()


@dataclass(frozen=True, slots=True)
class Truth:
    """True quantities: cumulative at one instant, or moved between two (truth_between)."""

    mono: float
    wall: float
    lines: dict[str, float]  # kg delivered by each line's pump: what its meters measure
    volumes: dict[str, float]  # m³ at line conditions, the same
    leaks: dict[str, float]  # kg lost unmetered from each line
    vessels: dict[str, float]  # kg in each vessel


class Plant:
    def __init__(
        self,
        spec: PlantSpec | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        step: float = STEP,
    ) -> None:
        # `clock` is time.monotonic in service; a test may drive the plant with its own, and
        # a long simulated run may take a coarser `step` (the midpoint rule's error on the
        # plant's waves grows with step², still ~1e-6 of the flow at 0.05 s).
        self.spec = spec or _builtin()
        self.clock = clock
        self.step = step
        self.started = clock()
        self.rng = np.random.default_rng(self.spec.seed)
        self.faults = Faults(self.spec.seed)
        for fault in self.spec.faults:
            self.faults.add(fault)
        self.t = 0.0  # s since start
        self._lines = [line.name for line in self.spec.lines]
        self._vessels = [v.name for v in self.spec.vessels]
        self._index = {name: i for i, name in enumerate(self._vessels)}
        self.line_mass = [0.0] * len(self._lines)
        self.line_volume = [0.0] * len(self._lines)
        self.leak = [0.0] * len(self._lines)
        # Of each pump's delivery, the share its last step could draw (below 1: the vessel
        # it draws from ran dry).
        self.share = [1.0] * len(self._lines)
        rho = self.density_at(0.0)
        self.vessel_mass = [
            v.mass if v.mass is not None else (v.level or 0.0) * (v.area or 0.0) * rho
            for v in self.spec.vessels
        ]
        self.wall_offset = time.time() - time.monotonic()
        self._history_mono: list[float] = []
        self._history: list[tuple[float, ...]] = []
        self._record()

    # --- physics --------------------------------------------------------------------------

    def temperature_at(self, t: float) -> float:
        return self.spec.temperature.at(t)

    def density_at(self, t: float) -> float:
        return self.spec.fluid.density_at(self.temperature_at(t))

    def _flow(self, i: int, t: float, rho: float) -> float:
        """kg/s the pump of line i delivers at plant time t (none while it is stopped)."""
        if self.faults.find("stop", self._lines[i], t) is not None:
            return 0.0
        line = self.spec.lines[i]
        q = line.flow.at(t)
        return q * rho if line.volumetric else q

    def _delivered(self, i: int, t: float, rho: float) -> float:
        """kg/s line i carries: its pump's delivery, less what an empty vessel cannot give.
        What the meters on it measure."""
        return self._flow(i, t, rho) * self.share[i]

    def _zero(self, meter: MeterSpec, t: float) -> float:
        """The meter's zero offset (kg/s): what it reads on a line that stands still."""
        fault = self.faults.find("zero", meter.name, t)
        return fault.magnitude if fault is not None else 0.0

    def _leak(self, i: int, t: float) -> float:
        fault = self.faults.find("leak", self._lines[i], t)
        return fault.magnitude if fault is not None else 0.0

    def now(self) -> float:
        """Plant time: seconds since the plant started (the clock of fault schedules)."""
        return self.clock() - self.started

    def open_leak(self, line: str, rate: float) -> Fault:
        """Open a leak on `line` now, `rate` kg/s, until cleared."""
        self.advance()
        return self.faults.add(Fault(kind="leak", target=line, start=self.now(), magnitude=rate))

    def open_leaks(self) -> list[Fault]:
        t = self.now()
        return [f for f in self.faults.faults if f.kind == "leak" and f.active(t)]

    def advance(self, mono: float | None = None) -> None:
        """Integrate the truth up to `mono` (default: now), midpoint rule in small steps."""
        target = (self.clock() if mono is None else mono) - self.started
        lines = self.spec.lines
        while self.t < target:
            h = min(self.step, target - self.t)
            mid = self.t + h / 2
            rho = self.density_at(mid)
            for i, line in enumerate(lines):
                q = self._flow(i, mid, rho) * h
                leak = self._leak(i, mid) * h
                self.share[i] = 1.0
                if line.source != OUTSIDE:
                    j = self._index[line.source]
                    available = max(self.vessel_mass[j], 0.0)
                    if q + leak > available:  # the vessel ran dry: the pump draws what is left
                        share = available / (q + leak) if q + leak > 0 else 0.0
                        q, leak = q * share, leak * share
                        self.share[i] = share
                    self.vessel_mass[j] -= q + leak
                else:
                    leak = min(leak, q)
                if line.to != OUTSIDE:
                    arrived = q if line.source != OUTSIDE else q - leak
                    self.vessel_mass[self._index[line.to]] += arrived
                self.line_mass[i] += q
                self.line_volume[i] += q / rho
                self.leak[i] += leak
            self.t += h
        if target - (self._history_mono[-1] - self.started) >= RECORD_EVERY:
            self._record()

    def _record(self) -> None:
        self._history_mono.append(self.started + self.t)
        self._history.append(self._state())
        if len(self._history) > 2 * HISTORY / RECORD_EVERY:
            keep = int(HISTORY / RECORD_EVERY)
            del self._history[:-keep], self._history_mono[:-keep]

    def _truth(self, mono: float, values: tuple[float, ...] | list[float]) -> Truth:
        n = len(self._lines)
        return Truth(
            mono,
            mono + self.wall_offset,
            dict(zip(self._lines, values[:n], strict=True)),
            dict(zip(self._lines, values[n : 2 * n], strict=True)),
            dict(zip(self._lines, values[2 * n : 3 * n], strict=True)),
            dict(zip(self._vessels, values[3 * n :], strict=True)),
        )

    def truth(self) -> Truth:
        """Cumulative true quantities now."""
        self.advance()
        return self._truth(self.started + self.t, self._state())

    def _state(self) -> tuple[float, ...]:
        return (*self.line_mass, *self.line_volume, *self.leak, *self.vessel_mass)

    def truth_between(self, wall_start: float, wall_end: float) -> Truth:
        """True quantities moved between two wall times (interpolated on the history)."""
        self.advance()
        if self._history_mono[-1] < self.started + self.t:
            self._record()  # so that "now" is inside the history, not just past its end
        a = self._at(wall_start - self.wall_offset)
        b = self._at(wall_end - self.wall_offset)
        return self._truth(b[0] - a[0], [y - x for x, y in zip(a[1], b[1], strict=True)])

    def _at(self, mono: float) -> tuple[float, tuple[float, ...]]:
        i = bisect.bisect_left(self._history_mono, mono)
        if i <= 0 or i >= len(self._history):
            raise ValueError(
                f"time {mono + self.wall_offset} is outside the plant's recorded history"
            )
        ta, tb = self._history_mono[i - 1], self._history_mono[i]
        f = (mono - ta) / (tb - ta)
        a, b = self._history[i - 1], self._history[i]
        return mono, tuple(x + (y - x) * f for x, y in zip(a, b, strict=True))

    def mass_in(self, vessel: str) -> float:
        """kg in a vessel now."""
        self.advance()
        return self.vessel_mass[self._index[vessel]]

    # --- what the instruments say (SI units) ------------------------------------------------

    def _noise(self, sigma: float) -> float:
        return float(self.rng.normal(0.0, sigma)) if sigma > 0 else 0.0

    def read(self, meter: str) -> dict[str, float]:
        """What a meter says now, by its profile's point names, in SI units (no faults): its
        alarm flags read 0 unless an alarm fault raises them."""
        spec = self.spec.meter(meter)
        self.advance()
        return {**_alarm_flags(spec.profile), **_READERS[spec.profile](self, spec)}

    def _line_index(self, meter: MeterSpec) -> int:
        assert meter.line is not None
        return self._lines.index(meter.line)

    def _vessel_index(self, meter: MeterSpec) -> int:
        assert meter.vessel is not None
        return self._index[meter.vessel]

    def _coriolis(self, meter: MeterSpec) -> dict[str, float]:
        i, t = self._line_index(meter), self.t
        temperature = self.temperature_at(t)
        rho = self.density_at(t)
        noise = 1 + self._noise(meter.accuracy / 2)
        mass_flow = self._delivered(i, t, rho) * noise + self._zero(meter, t)
        return {
            "mass_flow": mass_flow,
            "density": rho,
            "temperature": temperature,
            "volume_flow": mass_flow / rho,
            "mass_total": self.line_mass[i],
        }

    def _magmeter(self, meter: MeterSpec) -> dict[str, float]:
        i, t = self._line_index(meter), self.t
        rho = self.density_at(t)
        noise = 1 + self._noise(meter.accuracy / 2)
        volume_flow = (self._delivered(i, t, rho) * noise + self._zero(meter, t)) / rho
        return {"volume_flow": volume_flow, "volume_total": self.line_volume[i]}

    def _level(self, meter: MeterSpec) -> dict[str, float]:
        j = self._vessel_index(meter)
        area = self.spec.vessels[j].area or 1.0
        level = self.vessel_mass[j] / (self.density_at(self.t) * area)
        return {"level": level + self._noise(meter.accuracy / 2)}

    def _temperature(self, meter: MeterSpec) -> dict[str, float]:
        return {"temperature": self.temperature_at(self.t) + self._noise(meter.accuracy / 2)}

    def _rate_of(self, j: int) -> float:
        """kg/s into vessel j now."""
        name, t = self._vessels[j], self.t
        rho = self.density_at(t)
        rate = 0.0
        for i, line in enumerate(self.spec.lines):
            if line.to == name:
                rate += self._delivered(i, t, rho)
                rate -= self._leak(i, t) if line.source == OUTSIDE else 0
            if line.source == name:
                rate -= (self._flow(i, t, rho) + self._leak(i, t)) * self.share[i]
        return rate

    def _load_cell(self, meter: MeterSpec) -> dict[str, float]:
        j = self._vessel_index(meter)
        tare = self.spec.vessels[j].tare
        net = self.vessel_mass[j] + self._noise(meter.accuracy / 2)
        return {
            "gross_weight": net + tare,
            "net_weight": net,
            "tare": tare,
            "stable": 1.0 if abs(self._rate_of(j)) < STABLE_RATE else 0.0,
            "overload": 0.0,
        }

    def _hydrostatic(self, meter: MeterSpec) -> dict[str, float]:
        """A pressure transmitter at the bottom of a tank, set up for the reference density."""
        j = self._vessel_index(meter)
        area = self.spec.vessels[j].area or 1.0
        head = self.vessel_mass[j] / area * GRAVITY  # ρ·g·h = m·g/A
        pressure = head + self._noise(meter.accuracy / 2)
        return {
            "level": pressure / (self.spec.fluid.density * GRAVITY),
            "pressure": pressure,
            "temperature": self.temperature_at(self.t),
        }

    def _pressure(self, meter: MeterSpec) -> dict[str, float]:
        wave = self.spec.lines[self._line_index(meter)].pressure
        pressure = wave.at(self.t) if wave is not None else 0.0
        return {
            "pressure": pressure + self._noise(meter.accuracy / 2),
            "temperature": self.temperature_at(self.t),
        }


BELT_SPEED = 1.6  # m/s: a conveyor's belt, whatever it carries


def _belt_scale(plant: Plant, meter: MeterSpec) -> dict[str, float]:
    i, t = plant._line_index(meter), plant.t
    carried = plant._delivered(i, t, plant.density_at(t))  # kg/s on the belt
    weighed = carried * (1 + plant._noise(meter.accuracy / 2)) + plant._zero(meter, t)
    load = weighed / BELT_SPEED
    return {
        "load": load,
        "speed": BELT_SPEED,
        "rate": load * BELT_SPEED,
        "total": plant.line_mass[i],
    }


def _moisture(plant: Plant, meter: MeterSpec) -> dict[str, float]:
    """The moisture of the line or vessel it sits on, with the analyzer's noise (its accuracy
    is absolute, in %)."""
    where = (
        plant.spec.lines[plant._line_index(meter)]
        if meter.line is not None
        else plant.spec.vessels[plant._vessel_index(meter)]
    )
    return {
        "moisture": where.moisture + plant._noise(meter.accuracy / 2),
        "temperature": plant.temperature_at(plant.t),
    }


# What the simulated gas chromatograph analyzes: a pipeline natural gas, mole fractions by
# AGA8's names (a bias fault on it scales every component, so its sum leaves 1).
GC_GAS = {
    "methane": 0.9,
    "ethane": 0.05,
    "propane": 0.02,
    "nitrogen": 0.015,
    "carbon_dioxide": 0.01,
    "isobutane": 0.002,
    "n_butane": 0.003,
}


def _gas_chromatograph(plant: Plant, meter: MeterSpec) -> dict[str, float]:
    points = profiles.load(meter.profile).points
    return {p.name: GC_GAS.get(p.name, 0.0) for p in points if p.alarm is None}


_READERS = {
    "coriolis": Plant._coriolis,
    "magmeter": Plant._magmeter,
    "level_radar": Plant._level,
    "level_hydrostatic": Plant._hydrostatic,
    "load_cell": Plant._load_cell,
    "temperature_tx": Plant._temperature,
    "pressure_tx": Plant._pressure,
    "gas_chromatograph": _gas_chromatograph,
    "belt_scale": _belt_scale,
    "moisture_analyzer": _moisture,
}


@cache
def _alarm_flags(profile: str) -> dict[str, float]:
    return {p.name: 0.0 for p in profiles.load(profile).points if p.alarm is not None}
