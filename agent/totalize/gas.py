"""Natural gas by composition: AGA8 DETAIL and GERG-2008 (AGA Report No. 8, 2017; ISO
20765-2), and the virial and ideal models from the same composition.

The two AGA8 equations come from pyaga8, a binding of the Rust port of NIST's public AGA8
reference code (the code AGA8 itself publishes). It is the only maintained library that
implements both, but it publishes wheels for x86-64 Linux (glibc 2.34 and later), Windows
and macOS, and none for aarch64. So it is an extra (`pip install massgate[aga8]`), imported
only here and only when a model asks for it, and a configuration that names gerg2008 or
detail where it is missing is refused by `massgate check` with that reason, not at run time.

A composition is 21 mole fractions by AGA8's component names. They must sum to 1 within
1e-4 (a chromatograph's report, rounded); within that they are normalized, as flow computers
do, so the equations see a gas that sums to exactly 1.

The ranges each equation was fitted for are checked on every value: outside them the value
is still computed (a flow computer keeps totalizing) and carries a flag saying which range
it left, as the other density models do.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..core import units
from .density import R, virial_z

# The gas constant each AGA8 equation was fitted with (NIST's code: GERG-2008's 2006 CODATA
# value, DETAIL's 1994 one), for a Z consistent with its density. The ideal and virial models
# use CODATA 2018's R.
R_EQUATION = {"gerg2008": 8.314472, "detail": 8.31451}  # J/(mol·K)

# AGA8's 21 components, in its order.
COMPONENTS = (
    "methane",
    "nitrogen",
    "carbon_dioxide",
    "ethane",
    "propane",
    "isobutane",
    "n_butane",
    "isopentane",
    "n_pentane",
    "n_hexane",
    "n_heptane",
    "n_octane",
    "n_nonane",
    "n_decane",
    "hydrogen",
    "oxygen",
    "carbon_monoxide",
    "water",
    "hydrogen_sulfide",
    "helium",
    "argon",
)
EQUATIONS = ("gerg2008", "detail", "virial", "ideal")
AGA8_EQUATIONS = ("gerg2008", "detail")
SUM_TOLERANCE = 1e-4

# Per component: molar mass (kg/mol, GERG-2008's values), critical temperature (K), critical
# pressure (Pa) and acentric factor, for the virial model's pseudo-critical point (Kay's
# rule) and the ideal and virial molar mass. The test suite holds them to CoolProp's.
_PROPERTIES: dict[str, tuple[float, float, float, float]] = {
    "methane": (0.01604246, 190.564, 4.5992e6, 0.01142),
    "nitrogen": (0.0280134, 126.192, 3.3958e6, 0.0372),
    "carbon_dioxide": (0.0440095, 304.1282, 7.3773e6, 0.22394),
    "ethane": (0.03006904, 305.322, 4.8722e6, 0.0995),
    "propane": (0.04409562, 369.89, 4.2512e6, 0.1521),
    "isobutane": (0.0581222, 407.81, 3.629e6, 0.184),
    "n_butane": (0.0581222, 425.125, 3.796e6, 0.201),
    "isopentane": (0.07214878, 460.35, 3.378e6, 0.2274),
    "n_pentane": (0.07214878, 469.7, 3.37e6, 0.251),
    "n_hexane": (0.08617536, 507.82, 3.034e6, 0.299),
    "n_heptane": (0.10020194, 540.13, 2.736e6, 0.349),
    "n_octane": (0.11422852, 569.32, 2.497e6, 0.393),
    "n_nonane": (0.1282551, 594.55, 2.281e6, 0.4433),
    "n_decane": (0.14228168, 617.7, 2.103e6, 0.4884),
    "hydrogen": (0.00201588, 33.145, 1.2964e6, -0.219),
    "oxygen": (0.0319988, 154.581, 5.043e6, 0.0222),
    "carbon_monoxide": (0.0280101, 132.86, 3.494e6, 0.0497),
    "water": (0.01801528, 647.096, 22.064e6, 0.3443),
    "hydrogen_sulfide": (0.03408088, 373.1, 9.0e6, 0.1005),
    "helium": (0.004002602, 5.1953, 0.22832e6, -0.382),
    "argon": (0.039948, 150.687, 4.863e6, -0.00219),
}

# pyaga8 names the normal alkanes from hexane on without the "n_".
_HEAVY = ("n_hexane", "n_heptane", "n_octane", "n_nonane", "n_decane")
_PYAGA8_NAMES = {n: n.removeprefix("n_") if n in _HEAVY else n for n in COMPONENTS}

# GERG-2008's ranges (Kunz & Wagner, J. Chem. Eng. Data 57 (2012) 3032; ISO 20765-2): the
# normal range, where its uncertainty in gas-phase density is 0.1 %, and the extended one.
GERG_NORMAL = (90.0, 450.0, 35e6)  # K, K, Pa
GERG_EXTENDED = (60.0, 700.0, 70e6)
# DETAIL's (AGA Report No. 8, 1994, Table 1 and Figure 1): the equation's whole range, and
# its region 1, where the uncertainty is 0.1 % (-8 to 62 °C, up to 12 MPa).
DETAIL_RANGE = (143.0, 673.0, 280e6)
DETAIL_REGION_1 = (265.15, 335.15, 12e6)
# DETAIL's normal range of composition (the same Table 1), mole fractions; a group's
# components are summed (butanes, pentanes, hexanes and heavier). Argon and oxygen are not in
# the normal range at all.
DETAIL_NORMAL_COMPOSITION: tuple[tuple[str, tuple[str, ...], float, float], ...] = (
    ("methane", ("methane",), 0.45, 1.0),
    ("nitrogen", ("nitrogen",), 0.0, 0.5),
    ("carbon_dioxide", ("carbon_dioxide",), 0.0, 0.3),
    ("ethane", ("ethane",), 0.0, 0.1),
    ("propane", ("propane",), 0.0, 0.035),
    ("butanes", ("isobutane", "n_butane"), 0.0, 0.015),
    ("pentanes", ("isopentane", "n_pentane"), 0.0, 0.005),
    ("hexanes_plus", _HEAVY, 0.0, 0.001),
    ("helium", ("helium",), 0.0, 0.002),
    ("hydrogen", ("hydrogen",), 0.0, 0.1),
    ("carbon_monoxide", ("carbon_monoxide",), 0.0, 0.03),
    ("argon", ("argon",), 0.0, 0.0),
    ("oxygen", ("oxygen",), 0.0, 0.0),
    ("water", ("water",), 0.0, 0.0005),
    ("hydrogen_sulfide", ("hydrogen_sulfide",), 0.0, 0.0002),
)


class CompositionError(ValueError):
    """A composition that cannot describe a gas; the message says why, in the user's terms."""


@dataclass(frozen=True, slots=True)
class Composition:
    """Mole fractions of AGA8's 21 components, in COMPONENTS order, summing to 1."""

    fractions: tuple[float, ...]

    @classmethod
    def parse(cls, given: Mapping[str, Any]) -> Composition:
        """From {name: mole fraction} (a number, or text with a unit: '90 %', '50 ppm'); names
        not given are 0. Raises CompositionError."""
        fractions = dict.fromkeys(COMPONENTS, 0.0)
        for name, value in given.items():
            if name not in fractions:
                raise CompositionError(_unknown(name))
            fractions[name] = _fraction(name, value)
        total = math.fsum(fractions.values())
        if abs(total - 1.0) > SUM_TOLERANCE:
            raise CompositionError(
                f"the mole fractions sum to {total:.6g}, not 1 (within {SUM_TOLERANCE:g})"
            )
        return cls(tuple(fractions[name] / total for name in COMPONENTS))

    @classmethod
    def from_text(cls, text: str) -> Composition:
        """From 'methane=0.9,ethane=0.1' (a fraction, or with a unit: 'methane=90 %')."""
        given: dict[str, str] = {}
        for item in text.split(","):
            name, sep, value = (part.strip() for part in item.partition("="))
            if not sep or not name:
                raise CompositionError(f"expected name=fraction, got {item.strip()!r}")
            if name in given:
                raise CompositionError(f"{name} is given twice")
            given[name] = value
        return cls.parse(given)

    def items(self) -> list[tuple[str, float]]:
        """The components present, in AGA8's order."""
        return [(n, x) for n, x in zip(COMPONENTS, self.fractions, strict=True) if x > 0.0]

    @property
    def molar_mass(self) -> float:
        """kg/mol, from GERG-2008's component molar masses."""
        return math.fsum(x * _PROPERTIES[n][0] for n, x in self.items())

    def pseudo_critical(self) -> tuple[float, float, float]:
        """Kay's rule: mole-fraction averages of Tc (K), Pc (Pa) and the acentric factor."""
        tc = math.fsum(x * _PROPERTIES[n][1] for n, x in self.items())
        pc = math.fsum(x * _PROPERTIES[n][2] for n, x in self.items())
        omega = math.fsum(x * _PROPERTIES[n][3] for n, x in self.items())
        return tc, pc, omega


def _fraction(name: str, value: Any) -> float:
    """A mole fraction in 0..1: a plain number, or text with a unit ('90 %', '500 ppm')."""
    result = value
    if isinstance(value, str):
        try:
            result = float(value)
        except ValueError:
            try:
                result = units.parse_quantity(value, units.FRACTION)
            except units.UnitError as exc:
                raise CompositionError(f"{name}: {exc}") from None
    if isinstance(result, bool) or not isinstance(result, int | float):
        raise CompositionError(f"{name}: expected a mole fraction, got {value!r}")
    if not 0.0 <= result <= 1.0:  # NaN fails this too
        raise CompositionError(f"{name}: a mole fraction lies in 0..1, got {value!r}")
    return float(result)


def _unknown(name: str) -> str:
    import difflib  # noqa: PLC0415

    close = difflib.get_close_matches(name, COMPONENTS, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"unknown component '{name}'.{hint} (AGA8's 21: {', '.join(COMPONENTS)})"


class GasState(NamedTuple):
    density: float  # kg/m³, NaN where the equation found none
    z: float
    molar_mass: float  # kg/mol
    flag: str | None = None


def aga8_available() -> str | None:
    """None if pyaga8 can be imported here, else why not (for `check` and the command)."""
    try:
        import pyaga8  # noqa: F401, PLC0415
    except ImportError as exc:
        import platform  # noqa: PLC0415

        return (
            f"the AGA8 equations need the pyaga8 package, which is not installed here ({exc}); "
            "install massgate[aga8]. pyaga8 publishes wheels for x86-64 Linux (glibc 2.34 "
            f"and later), Windows and macOS; this machine is {platform.machine()} (elsewhere "
            "pip builds it with a Rust toolchain). The virial model needs no extra package."
        )
    return None


class Gas:
    """One gas by one equation: its density at line (or standard) conditions.

    An AGA8 equation is a pyaga8 object holding its own state, so a Gas is used by one thread
    at a time; `gas()` keeps one per thread.
    """

    def __init__(self, equation: str, composition: Composition) -> None:
        if equation not in EQUATIONS:
            raise ValueError(f"unknown equation {equation!r} (one of {', '.join(EQUATIONS)})")
        self.equation = equation
        self.composition = composition
        self._composition_flag = _composition_flag(equation, composition)
        self._aga8: Any = None
        if equation in AGA8_EQUATIONS:
            import pyaga8  # noqa: PLC0415

            mix = pyaga8.Composition()
            for name, x in composition.items():
                setattr(mix, _PYAGA8_NAMES[name], x)
            self._aga8 = pyaga8.Gerg2008() if equation == "gerg2008" else pyaga8.Detail()
            self._aga8.set_composition(mix)
            self._aga8.calc_molar_mass()
            self.molar_mass = float(self._aga8.mm) / 1000.0  # g/mol -> kg/mol
        else:
            self.molar_mass = composition.molar_mass
            self._critical = composition.pseudo_critical()

    def state(self, temperature: float, pressure: float) -> GasState:
        """At `temperature` (K) and absolute `pressure` (Pa)."""
        flags = [f for f in (self._range_flag(temperature, pressure), self._composition_flag) if f]
        if not (temperature > 0.0 and pressure > 0.0) or math.isinf(temperature + pressure):
            return GasState(math.nan, math.nan, self.molar_mass, self._flag(flags))
        if self.equation == "ideal":
            z = 1.0
        elif self.equation == "virial":
            tc, pc, omega = self._critical
            z = virial_z(
                temperature,
                pressure,
                critical_temperature=tc,
                critical_pressure=pc,
                acentric_factor=omega,
            )
        else:
            molar_density = self._molar_density(temperature, pressure)  # mol/m³
            if math.isnan(molar_density):
                flags.insert(0, "no density found at these conditions")
            z = pressure / (molar_density * R_EQUATION[self.equation] * temperature)
            return GasState(molar_density * self.molar_mass, z, self.molar_mass, self._flag(flags))
        density = pressure * self.molar_mass / (z * R * temperature)
        return GasState(density, z, self.molar_mass, self._flag(flags))

    def _molar_density(self, temperature: float, pressure: float) -> float:
        eq = self._aga8
        eq.temperature = temperature
        eq.pressure = pressure / 1000.0  # kPa
        try:
            # GERG's flag 0: the normal (gas-phase first) root search of NIST's code.
            eq.calc_density(0) if self.equation == "gerg2008" else eq.calc_density()
        except RuntimeError:  # "density calculation failed to converge"
            return math.nan
        value = float(eq.d) * 1000.0  # mol/l -> mol/m³
        return value if value > 0.0 and math.isfinite(value) else math.nan

    def _range_flag(self, temperature: float, pressure: float) -> str | None:
        if self.equation == "gerg2008":
            normal = _outside(temperature, pressure, GERG_NORMAL, "the normal range")
            if normal and _outside(temperature, pressure, GERG_EXTENDED, ""):
                normal += "; outside the extended range too (60..700 K, up to 70 MPa)"
            return normal
        if self.equation == "detail":
            return _outside(temperature, pressure, DETAIL_RANGE, "the equation's range") or (
                _outside(temperature, pressure, DETAIL_REGION_1, "region 1 (0.1 %)")
            )
        if self.equation == "virial":
            tc, pc, _ = self._critical
            tr, pr = temperature / tc, pressure / pc
            if tr < 1.0 or pr > 0.5 * tr:
                return f"Z outside its range (Tr {tr:.2f} < 1 or Pr {pr:.2f} > Tr/2)"
        return None

    def _flag(self, flags: list[str]) -> str | None:
        return f"{self.equation}: {'; '.join(flags)}" if flags else None


def _outside(t: float, p: float, bounds: tuple[float, float, float], name: str) -> str | None:
    t_min, t_max, p_max = bounds
    problems = []
    if not t_min <= t <= t_max:
        problems.append(f"temperature {t:.2f} K outside {name} ({t_min:g}..{t_max:g} K)")
    if not p <= p_max:
        problems.append(f"pressure {p / 1e6:.3f} MPa above {name} (up to {p_max / 1e6:g} MPa)")
    return "; ".join(problems) or None


def _composition_flag(equation: str, composition: Composition) -> str | None:
    """Which of DETAIL's normal composition ranges the gas leaves (GERG-2008 states none
    narrower than its 21 components)."""
    if equation != "detail":
        return None
    x = dict(zip(COMPONENTS, composition.fractions, strict=True))
    out = []
    for label, names, low, high in DETAIL_NORMAL_COMPOSITION:
        value = math.fsum(x[n] for n in names)
        if not low <= value <= high:
            out.append(f"{label} {value * 100:.4g} mol% (normal: {low * 100:g}..{high * 100:g})")
    return "composition outside the normal range: " + ", ".join(out) if out else None


_local = threading.local()


def gas(equation: str, composition: Composition) -> Gas:
    """This thread's Gas for the pair, made once (an AGA8 object is not shared by threads)."""
    cache: dict[tuple[str, Composition], Gas] | None = getattr(_local, "cache", None)
    if cache is None:
        cache = _local.cache = {}
    key = (equation, composition)
    found = cache.get(key)
    if found is None:
        found = cache[key] = Gas(equation, composition)
    return found
