"""An inventory's mass: load cells directly, or level through a strapping table (or an
area) and a density at the tank's temperature."""

from __future__ import annotations

import logging
import math

import numpy as np
import numpy.typing as npt

from ..config.model import ENTERED, DensityModel, InventoryConfig
from .conditions import density_at
from .engine import Engine, load

log = logging.getLogger(__name__)


def _gauge(model: DensityModel, pressure: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Gauge pressure for the linear model's compressibility (zeros without a pressure tag)."""
    if model.pressure is None:
        return np.zeros_like(pressure)
    return pressure - model.atmosphere if model.pressure_absolute else pressure


class InventoryGauge:
    """Mass in a vessel: ρ(T, P) · A · level, ρ(T, P) · strapping(level), or load cells' mass."""

    def __init__(self, config: InventoryConfig, *, engine: Engine | None = None) -> None:
        self.config = config
        self.engine = engine if engine is not None else load()
        self.mass: float | None = None
        self.mono = -math.inf
        self.level = math.nan
        self._slope = config.area or 0.0  # dV/dh at the last level, m²
        self._table: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None
        if config.strapping is not None:
            levels, volumes = config.strapping
            self._table = (np.asarray(levels), np.asarray(volumes))
        self.out_of_table = 0  # level readings outside the strapping table

    @property
    def tag(self) -> str:
        count = self.config.count if self.config.count != ENTERED else ""
        tag = self.config.level or self.config.mass or count
        assert tag is not None
        return tag

    def update(
        self, mono: float, value: float, temperature: float = math.nan, pressure: float = math.nan
    ) -> None:
        """A new reading of the level (m), of the load cells (kg) or of the count."""
        if math.isnan(value):
            return
        if self.config.count is not None:
            assert self.config.unit_mass is not None
            if value < 0 or value != round(value):
                return  # a count is a whole number: anything else is no reading
            self.level = value  # the count, for sigma
            self.mass = value * self.config.unit_mass
            self.mono = mono
            return
        if self.config.mass is not None:
            self.mass = value
            self.mono = mono
            return
        model = self.config.density
        assert model is not None
        if model.temperature is None:
            rho = model.reference
        else:
            rho = density_at(model, temperature, pressure, engine=self.engine).value
            if math.isnan(rho):
                return
        volume = self._volume(value)
        if math.isnan(volume):
            return
        self.level = value
        self.mass = rho * volume
        self.mono = mono

    def _volume(self, level: float) -> float:
        if self._table is None:
            assert self.config.area is not None
            return self.config.area * level
        levels, volumes = self._table
        volume = float(self.engine.strapping(np.array([level]), levels, volumes)[0])
        if math.isnan(volume):
            if self.out_of_table == 0:
                log.warning(
                    "inventory %s: level %.4f m is outside its strapping table (%.4f to %.4f m);"
                    " no mass until it is back inside",
                    self.config.name,
                    level,
                    levels[0],
                    levels[-1],
                )
            self.out_of_table += 1
            return volume
        i = int(np.clip(np.searchsorted(levels, level, side="right"), 1, levels.size - 1))
        self._slope = float((volumes[i] - volumes[i - 1]) / (levels[i] - levels[i - 1]))
        return volume

    def enter_count(self, count: int) -> None:
        """A stocktake (count: entry): it stands until the next one."""
        assert self.config.unit_mass is not None
        self.level = float(count)
        self.mass = count * self.config.unit_mass
        self.mono = math.inf

    def mass_at(self, mono: float) -> float | None:
        if self.config.count == ENTERED:
            return self.mass
        if self.mass is None or mono - self.mono > self.config.max_age:
            return None
        return self.mass

    @property
    def sigma(self) -> float:
        """Standard uncertainty of one mass reading, kg (rated accuracy taken as 2σ)."""
        if self.config.mass is not None:
            return self.config.accuracy / 2.0
        if self.config.count is not None:  # each unit's mass varies on its own
            return math.sqrt(max(self.level, 1.0)) * self.config.accuracy / 2.0
        assert self.config.density is not None
        return self.config.density.reference * self._slope * self.config.accuracy / 2.0


class DryGauge:
    """The dry share of a vessel's contents, for a dry balance: its gauge's mass times the
    share its analyzer last gave (1 − moisture, or solids), set by the gateway."""

    def __init__(self, gauge: InventoryGauge) -> None:
        self.gauge = gauge
        self.share = math.nan

    def mass_at(self, mono: float) -> float | None:
        mass = self.gauge.mass_at(mono)
        if mass is None or not 0.0 <= self.share <= 1.0:
            return None
        return mass * self.share

    @property
    def sigma(self) -> float:
        """The gauge's, on the dry share (the analyzer's own uncertainty is not added)."""
        return self.gauge.sigma * (self.share if 0.0 <= self.share <= 1.0 else 1.0)
