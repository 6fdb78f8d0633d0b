"""Samples to kilograms: stream totals and inventory masses.

The arithmetic runs in the numba kernels (agent/kernels.py); this module buffers the samples
of one cycle into arrays, hands them over in one call, and keeps what a restart must keep.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from . import density as density_models
from . import kernels
from .config import DensityModel, InventoryConfig, StreamConfig

log = logging.getLogger(__name__)


def density(
    model: DensityModel,
    temperatures: npt.NDArray[np.float64],
    pressures: npt.NDArray[np.float64] | None = None,
) -> tuple[npt.NDArray[np.float64], list[str]]:
    """Density of each sample (NaN where an input is missing) and the validity flags raised."""
    if model.model == "constant" or model.temperature is None:
        return np.full_like(temperatures, model.reference), []
    if model.model == "linear":
        rho = kernels.density_linear(
            temperatures, model.reference, model.reference_temperature, model.expansion
        )
        return rho, []
    if pressures is None:
        pressures = np.full_like(temperatures, math.nan)
    out = np.empty_like(temperatures)
    flags: list[str] = []
    for i, (t, p) in enumerate(zip(temperatures.tolist(), pressures.tolist(), strict=True)):
        result = density_at(model, t, p)
        out[i] = result.value
        if result.flag is not None and result.flag not in flags:
            flags.append(result.flag)
    return out, flags


def density_at(model: DensityModel, temperature: float, pressure: float) -> density_models.Density:
    """One sample's density; `pressure` as its tag gives it (NaN: no pressure tag)."""
    if math.isnan(temperature):
        return density_models.Density(math.nan)
    if model.pressure is None:
        gauge = 0.0
    elif math.isnan(pressure):
        return density_models.Density(math.nan)
    else:
        gauge = pressure - model.atmosphere if model.pressure_absolute else pressure
    absolute = gauge + model.atmosphere
    match model.model:
        case "quadratic":
            return density_models.quadratic(
                temperature,
                reference=model.reference,
                reference_temperature=model.reference_temperature,
                expansion=model.expansion,
                expansion2=model.expansion2,
            )
        case "water":
            return density_models.water(temperature, absolute)
        case "api":
            return density_models.api_density(
                model.reference,
                temperature,
                gauge,
                commodity=model.commodity,
                base=model.base,
                alpha60=model.alpha60,
            )
        case "gas":
            if model.z is not None:
                return density_models.gas(
                    temperature, absolute, molar_mass=model.molar_mass, z=model.z
                )
            return density_models.gas_virial(
                temperature,
                absolute,
                molar_mass=model.molar_mass,
                critical_temperature=model.critical_temperature,
                critical_pressure=model.critical_pressure,
                acentric_factor=model.acentric_factor,
            )
    return density_models.linear(
        temperature,
        reference=model.reference,
        reference_temperature=model.reference_temperature,
        expansion=model.expansion,
    )


@dataclass(slots=True)
class Period:
    """What a stream moved since its last totals record."""

    mass: float
    start_wall: float | None
    end_wall: float | None
    estimated: float
    gap_time: float


class StreamTotal:
    """The running total of one stream (kg), fed sample by sample, integrated per cycle."""

    def __init__(self, config: StreamConfig, *, saved: dict[str, object] | None = None) -> None:
        self.config = config
        self.state = kernels.new_state()
        self.reported = (0.0, 0.0, 0.0)  # net, estimated, gap time at the last totals record
        self.last_wall: float | None = None
        self.first_wall: float | None = None  # first sample integrated by this process
        self.period_start_wall: float | None = None
        if saved is not None:
            self.state[:] = np.asarray(saved["state"], dtype=np.float64)
            # Monotonic time restarts with the process (and the boot): the first sample after
            # a restart opens a new interval instead of bridging the downtime.
            self.state[kernels.HAS_LAST] = 0.0
            self.state[kernels.PENDING_BAD] = 0.0
            reported = saved["reported"]
            assert isinstance(reported, list)
            self.reported = (float(reported[0]), float(reported[1]), float(reported[2]))
        self._t: list[float] = []
        self._wall: list[float] = []
        self._flow: list[float] = []
        self._temp: list[float] = []
        self._pressure: list[float] = []
        self.density_flags: dict[str, int] = {}  # validity flag → cycles it was raised in

    def add(
        self,
        mono: float,
        wall: float,
        flow: float,
        temperature: float = math.nan,
        pressure: float = math.nan,
    ) -> None:
        """Queue one sample (SI flow; NaN when the reading is bad)."""
        self._t.append(mono)
        self._wall.append(wall)
        self._flow.append(flow)
        self._temp.append(temperature)
        self._pressure.append(pressure)

    def integrate(self) -> None:
        """Run the kernel over the samples queued since the last call."""
        if not self._t:
            return
        t = np.asarray(self._t, dtype=np.float64)
        flow = np.asarray(self._flow, dtype=np.float64)
        if self.config.volume_flow is not None:
            assert self.config.density is not None
            rho, flags = density(
                self.config.density,
                np.asarray(self._temp, dtype=np.float64),
                np.asarray(self._pressure, dtype=np.float64),
            )
            for flag in flags:
                if flag not in self.density_flags:
                    log.warning("stream %s: %s", self.config.name, flag)
                self.density_flags[flag] = self.density_flags.get(flag, 0) + 1
            flow = flow * rho
        good = ~np.isnan(flow)
        self.state = kernels.integrate_flow(
            t, flow, good, self.state, self.config.max_gap, self._mass_cutoff(flow)
        )
        good_walls = [w for w, ok in zip(self._wall, good.tolist(), strict=True) if ok]
        if good_walls:
            if self.first_wall is None:
                self.first_wall = good_walls[0]
            if self.period_start_wall is None:
                self.period_start_wall = self.last_wall or good_walls[0]
            self.last_wall = good_walls[-1]
        self._t.clear()
        self._wall.clear()
        self._flow.clear()
        self._temp.clear()
        self._pressure.clear()

    def _mass_cutoff(self, mass_flow: npt.NDArray[np.float64]) -> float:
        cutoff = self.config.low_flow_cutoff
        if cutoff == 0.0 or self.config.mass_flow is not None:
            return cutoff
        # A volume cut-off applies to the volume signal; in mass terms it scales with density.
        assert self.config.density is not None
        return cutoff * self.config.density.reference

    @property
    def forward(self) -> float:
        return float(self.state[kernels.FORWARD])

    @property
    def reverse(self) -> float:
        return float(self.state[kernels.REVERSE])

    @property
    def net(self) -> float:
        return self.forward - self.reverse

    @property
    def last_flow(self) -> float:
        """Mass flow of the last good sample, kg/s (NaN before the first one)."""
        return float(self.state[kernels.LAST_Q]) if self.state[kernels.HAS_LAST] else math.nan

    def net_at(self, mono: float) -> float | None:
        """Net total extrapolated to `mono` with the last flow; None when the data is too old.

        Streams are polled at different instants; a balance compares them at one instant.
        """
        if not self.state[kernels.HAS_LAST]:
            return None
        age = mono - float(self.state[kernels.LAST_T])
        if age > self.config.max_gap:
            return None
        return self.net + float(self.state[kernels.LAST_Q]) * max(age, 0.0)

    def close_period(self) -> Period:
        """The quantity since the last totals record; the next period starts now."""
        net = self.net
        estimated = float(self.state[kernels.ESTIMATED])
        gap = float(self.state[kernels.GAP_TIME])
        period = Period(
            mass=net - self.reported[0],
            start_wall=self.period_start_wall,
            end_wall=self.last_wall,
            estimated=estimated - self.reported[1],
            gap_time=gap - self.reported[2],
        )
        self.reported = (net, estimated, gap)
        self.period_start_wall = None
        return period

    def saved(self) -> dict[str, object]:
        return {"state": self.state.tolist(), "reported": list(self.reported)}


class InventoryGauge:
    """Mass in a tank from its level: m = ρ(T) · A · level."""

    def __init__(self, config: InventoryConfig) -> None:
        self.config = config
        self.mass: float | None = None
        self.mono = -math.inf
        self.level = math.nan

    def update(
        self, mono: float, level: float, temperature: float = math.nan, pressure: float = math.nan
    ) -> None:
        model = self.config.density
        if math.isnan(level):
            return
        if model.temperature is None:
            rho = model.reference
        else:
            rho = density_at(model, temperature, pressure).value
            if math.isnan(rho):
                return
        self.level = level
        self.mass = rho * self.config.area * level
        self.mono = mono

    def mass_at(self, mono: float) -> float | None:
        if self.mass is None or mono - self.mono > self.config.max_age:
            return None
        return self.mass

    @property
    def sigma(self) -> float:
        """Standard uncertainty of one mass reading, kg (rated accuracy taken as 2σ)."""
        rho = self.config.density.reference
        return rho * self.config.area * self.config.accuracy / 2.0
