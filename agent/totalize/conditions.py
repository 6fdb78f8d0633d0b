"""Density at line conditions: each sample's temperature and pressure through the stream's
or the inventory's density model (linear, quadratic, water, API 11.1, gas)."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from ..config import DensityModel
from . import density as density_models
from .engine import Engine
from .gas import Composition


def density(
    model: DensityModel,
    temperatures: npt.NDArray[np.float64],
    pressures: npt.NDArray[np.float64] | None = None,
    *,
    engine: Engine,
    composition: Composition | None = None,
) -> tuple[npt.NDArray[np.float64], list[str]]:
    """Density of each sample (NaN where an input is missing) and the validity flags raised.
    `composition`: a live gas's, from its analyzer (None: none good yet)."""
    if model.model == "constant" or model.temperature is None:
        return np.full_like(temperatures, model.reference), []
    if model.model == "linear" and not model.compressibility:
        rho = engine.density_linear(
            temperatures, model.reference, model.reference_temperature, model.expansion
        )
        return rho, []
    if pressures is None:
        pressures = np.full_like(temperatures, math.nan)
    out = np.empty_like(temperatures)
    flags: list[str] = []
    for i, (t, p) in enumerate(zip(temperatures.tolist(), pressures.tolist(), strict=True)):
        result = density_at(model, t, p, engine=engine, composition=composition)
        out[i] = result.value
        if result.flag is not None and result.flag not in flags:
            flags.append(result.flag)
    return out, flags


def density_at(
    model: DensityModel,
    temperature: float,
    pressure: float,
    *,
    engine: Engine,
    composition: Composition | None = None,
) -> density_models.Density:
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
            if model.composition_device is not None and composition is None:
                why = f"gas: no composition from {model.composition_device} yet"
                return density_models.Density(math.nan, why)
            if model.composition_device is None:
                composition = model.composition
            if composition is not None:
                from .gas import gas  # noqa: PLC0415

                state = gas(model.equation, composition).state(temperature, absolute)
                return density_models.Density(state.density, state.flag)
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
    return density_models.Density(
        engine.linear_density(
            temperature,
            gauge,
            model.reference,
            model.reference_temperature,
            model.expansion,
            model.compressibility,
        )
    )
