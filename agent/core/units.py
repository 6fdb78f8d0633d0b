"""Quantities with units, converted to SI once at load time.

Internal units are kg, s, m³, Pa, K (and their products). A quantity in the YAML is written
"998.2 kg/m3" or "500ms"; a bare number is refused where a unit is required, so nobody has to
guess whether "2" means hours or seconds.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass

#: Dimension names, for messages ("'kg/h' is a mass flow, not a length").
MASS = "mass"
MASS_FLOW = "mass flow"
VOLUME = "volume"
VOLUME_FLOW = "volume flow"
DENSITY = "density"
TEMPERATURE = "temperature"
PRESSURE = "pressure"
LENGTH = "length"
AREA = "area"
TIME = "time"
FRACTION = "fraction"
BELT_LOAD = "belt load"  # mass per length of a conveyor belt
SPEED = "speed"
PER_KELVIN = "thermal expansion"
PER_PASCAL = "compressibility"
BYTES = "size"
DIMENSIONLESS = "dimensionless"


@dataclass(frozen=True, slots=True)
class Unit:
    """SI value = raw * factor + offset."""

    symbol: str
    dimension: str
    factor: float
    offset: float = 0.0

    def to_si(self, value: float) -> float:
        return value * self.factor + self.offset


_LB = 0.45359237
_GAL_US = 3.785411784e-3
_BBL = 0.158987294928

_UNITS: dict[str, Unit] = {}


def _add(dimension: str, factor: float, *symbols: str, offset: float = 0.0) -> None:
    for symbol in symbols:
        _UNITS[symbol] = Unit(symbol, dimension, factor, offset)


_add(MASS, 1.0, "kg")
_add(MASS, 1e-3, "g")
_add(MASS, 1e3, "t")
_add(MASS, _LB, "lb")
_add(MASS_FLOW, 1.0, "kg/s")
_add(MASS_FLOW, 1 / 60, "kg/min")
_add(MASS_FLOW, 1 / 3600, "kg/h")
_add(MASS_FLOW, 1e-3, "g/s")
_add(MASS_FLOW, 1e3 / 3600, "t/h")
_add(MASS_FLOW, 1e3 / 86400, "t/d")
_add(MASS_FLOW, _LB / 3600, "lb/h")
_add(MASS_FLOW, _LB / 60, "lb/min")
_add(VOLUME, 1.0, "m3")
_add(VOLUME, 1e-3, "l", "L")
_add(VOLUME, _GAL_US, "gal")
_add(VOLUME, _BBL, "bbl")
_add(VOLUME_FLOW, 1.0, "m3/s")
_add(VOLUME_FLOW, 1 / 60, "m3/min")
_add(VOLUME_FLOW, 1 / 3600, "m3/h")
_add(VOLUME_FLOW, 1e-3, "l/s", "L/s")
_add(VOLUME_FLOW, 1e-3 / 60, "l/min", "L/min")
_add(VOLUME_FLOW, 1e-3 / 3600, "l/h", "L/h")
_add(VOLUME_FLOW, _GAL_US / 60, "gal/min", "gpm")
_add(VOLUME_FLOW, _BBL / 3600, "bbl/h")
_add(VOLUME_FLOW, _BBL / 86400, "bbl/d")
_add(DENSITY, 1.0, "kg/m3", "g/l", "g/L")
_add(DENSITY, 1e3, "g/cm3", "kg/l", "kg/L", "t/m3")
_add(DENSITY, _LB / _GAL_US, "lb/gal")
_add(TEMPERATURE, 1.0, "K")
_add(TEMPERATURE, 1.0, "degC", "°C", "C", offset=273.15)
_add(TEMPERATURE, 5 / 9, "degF", "°F", "F", offset=273.15 - 32 * 5 / 9)
_add(PRESSURE, 1.0, "Pa")
_add(PRESSURE, 1e3, "kPa")
_add(PRESSURE, 1e6, "MPa")
_add(PRESSURE, 1e5, "bar")
_add(PRESSURE, 1e2, "mbar", "hPa")
_add(PRESSURE, 6894.757293168361, "psi")
_add(LENGTH, 1.0, "m")
_add(LENGTH, 1e-2, "cm")
_add(LENGTH, 1e-3, "mm")
_add(LENGTH, 0.3048, "ft")
_add(LENGTH, 0.0254, "in")
_add(BELT_LOAD, 1.0, "kg/m")
_add(BELT_LOAD, _LB / 0.3048, "lb/ft")
_add(SPEED, 1.0, "m/s")
_add(SPEED, 1 / 60, "m/min")
_add(SPEED, 0.3048 / 60, "ft/min")
_add(AREA, 1.0, "m2")
_add(AREA, 1e-4, "cm2")
_add(AREA, 0.09290304, "ft2")
_add(TIME, 1.0, "s")
_add(TIME, 1e-3, "ms")
_add(TIME, 60.0, "min")
_add(TIME, 3600.0, "h")
_add(TIME, 86400.0, "d")
_add(FRACTION, 1e-2, "%")
_add(FRACTION, 1.0, "ratio")
_add(FRACTION, 1e-6, "ppm")
_add(PER_KELVIN, 1.0, "1/K", "1/degC")
_add(PER_KELVIN, 9 / 5, "1/degF")
_add(PER_PASCAL, 1.0, "1/Pa")
_add(PER_PASCAL, 1e-3, "1/kPa")
_add(PER_PASCAL, 1e-5, "1/bar")
_add(PER_PASCAL, 1e-6, "1/MPa")
_add(PER_PASCAL, 1 / 6894.757293168361, "1/psi")
_add(DIMENSIONLESS, 1.0, "1", "flag", "count")
_add(BYTES, 1.0, "B")
_add(BYTES, 1e3, "kB")
_add(BYTES, 1e6, "MB")
_add(BYTES, 1e9, "GB")
_add(BYTES, 1024.0, "KiB")
_add(BYTES, 1024.0**2, "MiB")
_add(BYTES, 1024.0**3, "GiB")

_QUANTITY = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(\S.*?)?\s*$")


class UnitError(ValueError):
    """A quantity or unit the loader cannot accept; the message is for the plant engineer."""


def lookup(symbol: str, *, dimension: str | None = None) -> Unit:
    """Find a unit by its symbol, checking its dimension when one is expected."""
    unit = _UNITS.get(symbol.strip())
    if unit is None:
        folded = [s for s in _UNITS if s.lower() == symbol.strip().lower()]
        close = folded or difflib.get_close_matches(symbol.strip(), list(_UNITS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UnitError(f"'{symbol}' is not a unit massgate knows.{hint}")
    if dimension is not None and unit.dimension != dimension:
        raise UnitError(f"'{symbol}' is a {unit.dimension} unit, but a {dimension} is expected")
    return unit


def units_of(dimension: str) -> list[str]:
    return [s for s, u in _UNITS.items() if u.dimension == dimension]


def parse_quantity(text: object, dimension: str) -> float:
    """Parse "998.2 kg/m3" into SI (kg/m³). A bare number is refused."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise UnitError(f"expected a {dimension} with a unit, e.g. '{_example(dimension)}'")
    if isinstance(text, int | float):
        raise UnitError(
            f"{text} has no unit; write the {dimension} with its unit, "
            f"e.g. '{text} {units_of(dimension)[0]}'"
        )
    match = _QUANTITY.match(text)
    if match is None:
        raise UnitError(f"'{text}' is not a number followed by a unit")
    number, symbol = match.groups()
    if not symbol:
        raise UnitError(
            f"'{text}' has no unit; write the {dimension} with its unit, "
            f"e.g. '{number} {units_of(dimension)[0]}'"
        )
    unit = lookup(symbol, dimension=dimension)
    value = float(number)
    result = unit.to_si(value)
    if not math.isfinite(value) or not math.isfinite(result):
        raise UnitError(f"'{text}' is not a finite {dimension}")
    return result


def describe(si: float, dimension: str) -> str:
    """An SI bound in the unit a person would write it in ('10 min', '100 %', '60 s')."""
    preferred = {
        TIME: ("d", "h", "min", "s", "ms"),
        FRACTION: ("%",),
        BYTES: ("GiB", "MiB", "KiB", "B"),
    }.get(dimension)
    if preferred is None:
        symbol = units_of(dimension)[0]
        return f"{si / _UNITS[symbol].factor:g} {symbol}"
    for symbol in preferred:
        unit = _UNITS[symbol]
        amount = (si - unit.offset) / unit.factor
        if amount >= 1 and float(amount).is_integer():
            return f"{amount:g} {symbol}"
    return f"{si / _UNITS[preferred[-1]].factor:g} {preferred[-1]}"


def _example(dimension: str) -> str:
    return {
        TIME: "500ms",
        DENSITY: "998.2 kg/m3",
        TEMPERATURE: "20 degC",
        MASS: "2 kg",
        FRACTION: "1 %",
        LENGTH: "3 mm",
        AREA: "1.5 m2",
        BYTES: "64 MiB",
    }.get(dimension, f"1 {units_of(dimension)[0]}")
