"""A small plant that moves real (simulated) mass and knows exactly how much.

Feed line (pump P-101, Coriolis FT-101) → tank T-100 (radar LT-100) → product line
(pump P-102, temperature TT-102, magnetic meter FT-102). A leak can be opened on the product
line between the tank and FT-102: the tank loses mass that no meter sees.

Flows are smooth functions of time, integrated in small steps: "truth" is this integral,
which the agent's kilograms are held to. Meter readings add the meter's noise (and bias) to
the true value at the instant of the read, so the agent sees what a real meter would say.
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass, field, replace

import numpy as np

from .faults import Faults

STEP = 0.005  # s, integration step of the truth
GRAVITY = 9.80665  # m/s²


@dataclass(frozen=True, slots=True, kw_only=True)
class PlantSpec:
    seed: int = 1
    tank_area: float = 1.0  # m²
    tank_level: float = 1.5  # m, at start
    feed_flow: float = 2.0  # kg/s, mean
    feed_swing: float = 0.10  # ± fraction of the mean
    feed_period: float = 90.0  # s
    product_flow: float = 1.95 / 996.0  # m³/s at the pump, mean
    product_swing: float = 0.05
    product_period: float = 70.0
    temperature: float = 303.15  # K, mean
    temperature_swing: float = 5.0  # K
    temperature_period: float = 120.0  # s
    fluid_density: float = 998.2  # kg/m³ at fluid_reference_temperature
    fluid_reference_temperature: float = 293.15  # K
    fluid_expansion: float = 2.1e-4  # 1/K
    coriolis_noise: float = 0.0005  # relative σ
    magmeter_noise: float = 0.001  # relative σ
    level_noise: float = 0.0003  # m σ
    temperature_noise: float = 0.05  # K σ
    leak_rate: float = 0.0  # kg/s when the leak is open
    leak_start: float | None = None  # s after start, or None: only by command
    tank_tare: float = 850.0  # kg, the empty tank on its load cells
    load_cell_noise: float = 0.2  # kg σ
    discharge_pressure: float = 3.0e5  # Pa gauge, product pump
    pressure_noise: float = 500.0  # Pa σ, discharge pressure
    head_noise: float = 10.0  # Pa σ, hydrostatic level transmitter (≈ 1 mm of water)


@dataclass(slots=True)
class Truth:
    """Cumulative true quantities at one instant."""

    mono: float
    wall: float
    feed: float  # kg through FT-101
    product: float  # kg through FT-102
    leak: float  # kg lost from the product line
    tank: float  # kg in T-100


@dataclass
class Plant:
    spec: PlantSpec = field(default_factory=PlantSpec)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.spec.seed)
        self.faults = Faults(self.spec.seed)
        self.t = 0.0  # s since start
        self.feed = 0.0
        self.product = 0.0
        self.product_volume = 0.0  # m³ at line conditions through FT-102
        self.leak = 0.0
        self.tank = (
            self.spec.tank_area * self.spec.tank_level * self.density(self.temperature_at(0.0))
        )
        self.leak_open = False
        self.leak_opened_at: float | None = None  # monotonic
        self.wall_offset = time.time() - time.monotonic()
        self.history: list[Truth] = []
        self._record()

    # --- physics --------------------------------------------------------------------------

    def density(self, temperature: float) -> float:
        s = self.spec
        return s.fluid_density / (
            1.0 + s.fluid_expansion * (temperature - s.fluid_reference_temperature)
        )

    def temperature_at(self, t: float) -> float:
        s = self.spec
        return s.temperature + s.temperature_swing * math.sin(
            2 * math.pi * t / s.temperature_period
        )

    def feed_at(self, t: float) -> float:
        s = self.spec
        return s.feed_flow * (1 + s.feed_swing * math.sin(2 * math.pi * t / s.feed_period))

    def product_volume_at(self, t: float) -> float:
        s = self.spec
        return s.product_flow * (
            1 + s.product_swing * math.sin(2 * math.pi * t / s.product_period + 1.0)
        )

    def leak_at(self, t: float) -> float:
        s = self.spec
        scheduled = s.leak_start is not None and t >= s.leak_start
        if (fault := self.faults.find("leak", "plant", t)) is not None:
            return fault.magnitude
        return s.leak_rate if (self.leak_open or scheduled) else 0.0

    def now(self) -> float:
        """Plant time: seconds since the plant started (the clock of fault schedules)."""
        return time.monotonic() - self.started

    def open_leak(self, rate: float | None = None) -> None:
        """Open the leak now (rate in kg/s, default the spec's)."""
        if rate is not None:
            self.spec = replace(self.spec, leak_rate=rate)
        self.advance()
        self.leak_open = True
        self.leak_opened_at = time.monotonic()

    def advance(self, mono: float | None = None) -> None:
        """Integrate the truth up to `mono` (default: now), midpoint rule in small steps."""
        target = (time.monotonic() if mono is None else mono) - self.started
        while self.t < target:
            h = min(STEP, target - self.t)
            mid = self.t + h / 2
            rho = self.density(self.temperature_at(mid))
            feed = self.feed_at(mid) * h
            volume = self.product_volume_at(mid) * h
            product = volume * rho
            self.product_volume += volume
            leak = self.leak_at(mid) * h
            self.feed += feed
            self.product += product
            self.leak += leak
            self.tank += feed - product - leak
            self.t += h
        if not self.history or target - (self.history[-1].mono - self.started) >= 0.05:
            self._record()

    def _record(self) -> None:
        mono = self.started + self.t
        self.history.append(
            Truth(mono, mono + self.wall_offset, self.feed, self.product, self.leak, self.tank)
        )

    def truth_between(self, wall_start: float, wall_end: float) -> Truth:
        """True quantities moved between two wall times (interpolated on the history)."""
        self.advance()
        if self.history[-1].mono < self.started + self.t:
            self._record()  # so that "now" is inside the history, not just past its end
        a = self._at(wall_start)
        b = self._at(wall_end)
        return Truth(
            b.mono - a.mono,
            b.wall - a.wall,
            b.feed - a.feed,
            b.product - a.product,
            b.leak - a.leak,
            b.tank - a.tank,
        )

    def _at(self, wall: float) -> Truth:
        i = bisect.bisect_left(self.history, wall, key=lambda h: h.wall)
        if i <= 0 or i >= len(self.history):
            raise ValueError(f"wall time {wall} is outside the plant's recorded history")
        a, b = self.history[i - 1], self.history[i]
        f = (wall - a.wall) / (b.wall - a.wall)

        def lerp(x: float, y: float) -> float:
            return x + (y - x) * f

        return Truth(
            lerp(a.mono, b.mono),
            wall,
            lerp(a.feed, b.feed),
            lerp(a.product, b.product),
            lerp(a.leak, b.leak),
            lerp(a.tank, b.tank),
        )

    # --- what the instruments say (SI units) ------------------------------------------------

    def _noise(self, sigma: float) -> float:
        return float(self.rng.normal(0.0, sigma)) if sigma > 0 else 0.0

    def coriolis(self) -> dict[str, float]:
        self.advance()
        t = self.t
        temperature = self.temperature_at(t)
        rho = self.density(temperature)
        mass_flow = self.feed_at(t) * (1 + self._noise(self.spec.coriolis_noise))
        return {
            "mass_flow": mass_flow,
            "density": rho,
            "temperature": temperature,
            "volume_flow": mass_flow / rho,
            "mass_total": self.feed,
        }

    def magmeter(self) -> dict[str, float]:
        self.advance()
        t = self.t
        volume = self.product_volume_at(t) * (1 + self._noise(self.spec.magmeter_noise))
        return {"volume_flow": volume, "volume_total": self.product_volume}

    def level(self) -> dict[str, float]:
        self.advance()
        rho = self.density(self.temperature_at(self.t))
        level = self.tank / (rho * self.spec.tank_area)
        return {"level": level + self._noise(self.spec.level_noise)}

    def temperature(self) -> dict[str, float]:
        self.advance()
        reading = self.temperature_at(self.t) + self._noise(self.spec.temperature_noise)
        return {"temperature": reading}

    def load_cell(self) -> dict[str, float]:
        """T-100 stands on load cells: the indicator weighs tank and contents."""
        self.advance()
        net = self.tank + self._noise(self.spec.load_cell_noise)
        t = self.t
        rate = (
            self.feed_at(t)
            - self.product_volume_at(t) * self.density(self.temperature_at(t))
            - self.leak_at(t)
        )
        return {
            "gross_weight": net + self.spec.tank_tare,
            "net_weight": net,
            "tare": self.spec.tank_tare,
            "stable": 1.0 if abs(rate) < 0.2 else 0.0,
            "overload": 0.0,
        }

    def hydrostatic(self) -> dict[str, float]:
        """A pressure transmitter at the bottom of T-100, set up for the reference density."""
        self.advance()
        temperature = self.temperature_at(self.t)
        head = self.tank / self.spec.tank_area * GRAVITY  # ρ·g·h = m·g/A
        pressure = head + self._noise(self.spec.head_noise)
        return {
            "level": pressure / (self.spec.fluid_density * GRAVITY),
            "pressure": pressure,
            "temperature": temperature,
        }

    def pressure(self) -> dict[str, float]:
        self.advance()
        swing = 0.05 * math.sin(2 * math.pi * self.t / self.spec.product_period)
        return {
            "pressure": self.spec.discharge_pressure * (1 + swing)
            + self._noise(self.spec.pressure_noise),
            "temperature": self.temperature_at(self.t),
        }
