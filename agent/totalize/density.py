"""Density models, as pure functions in SI units (kg/m³, K, Pa): usable on their own.

- API MPMS 11.1 (2004): CTL and CPL for crude oil, refined products, lubricating oils and
  special applications (a given thermal expansion coefficient), 60 °F and 15 °C bases, and
  the base density from an observed density (the standard's iteration).
- Water: IAPWS-IF97 region 1 (compressed liquid), which reproduces IAPWS-95 far inside
  0.01 % between 0 and 100 °C and 1 and 100 bar.
- Other liquids: linear and quadratic thermal expansion from a reference density.
- Gases: ρ = P·M/(Z·R·T), Z given or from a second virial coefficient (Pitzer).

Every model returns a `Density`: its value and, when an input lies outside the range the
model was made for, a flag saying which. The value is still computed (a flow computer keeps
totalizing) but the flag travels with it into quality and records: nothing is extrapolated
silently.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple


class Density(NamedTuple):
    value: float  # kg/m³
    flag: str | None = None  # why the value is outside the model's validity, or None


def _f_from_k(kelvin: float) -> float:
    return (kelvin - 273.15) * 1.8 + 32.0


PSI = 6894.757293168361  # Pa


# --- API MPMS 11.1 (2004) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Commodity:
    name: str
    k0: float
    k1: float
    k2: float
    rho_min: float  # kg/m³ at 60 °F, validity of the commodity's constants
    rho_max: float


# Table of the standard's constants, for ρ60 in kg/m³ and α60 in 1/°F.
CRUDE = Commodity("crude oil", 341.0957, 0.0, 0.0, 610.6, 1163.5)
GASOLINE = Commodity("gasolines", 192.4571, 0.2438, 0.0, 610.6, 770.352)
TRANSITION = Commodity("transition zone", 1489.0670, 0.0, -0.00186840, 770.352, 787.5195)
JET = Commodity("jet fuels", 330.3010, 0.0, 0.0, 787.5195, 838.3127)
FUEL_OIL = Commodity("fuel oils", 103.8720, 0.2701, 0.0, 838.3127, 1163.5)
LUBE = Commodity("lubricating oils", 0.0, 0.34878, 0.0, 800.9, 1163.5)
REFINED = (GASOLINE, TRANSITION, JET, FUEL_OIL)
COMMODITIES = {
    "crude": CRUDE,
    "refined": None,  # chosen by density among REFINED
    "gasoline": GASOLINE,
    "transition": TRANSITION,
    "jet": JET,
    "fuel_oil": FUEL_OIL,
    "lube": LUBE,
    "special": None,  # α60 given
}

_DELTA60 = 0.01374979547  # °F, the ITS-90 shift of 60 °F in the standard's correlation
_T60_68 = 60.0068749  # °F, 60 °F (ITS-90) on the IPTS-68 scale
_ITS90_A = (-0.148759, -0.267408, 1.080760, 1.269056, -4.089591, -1.871251, 7.438081, -3.536296)
_T_MIN_F, _T_MAX_F = -58.0, 302.0
_P_MAX_PSIG = 1500.0
_ALPHA_MIN, _ALPHA_MAX = 230.0e-6, 930.0e-6  # 1/°F, special applications


def its90_to_ipts68_f(t90_f: float) -> float:
    """The standard's temperature shift: °F on ITS-90 to °F on IPTS-68."""
    tau = (t90_f - 32.0) / 1.8 / 630.0
    shift = 0.0
    for a in reversed(_ITS90_A):
        shift = (shift + a) * tau
    return 1.8 * ((t90_f - 32.0) / 1.8 - shift) + 32.0


def refined_commodity(rho60: float) -> Commodity:
    """The refined-products group whose density range holds ρ60."""
    for commodity in REFINED:
        if rho60 < commodity.rho_max:
            return commodity
    return FUEL_OIL


def _alpha_constants(commodity: str, rho60: float, alpha60: float | None) -> tuple[float, ...]:
    if commodity == "special":
        if alpha60 is None:
            raise ValueError("special applications need alpha60 (1/°F)")
        return (0.0, 0.0, alpha60)
    group = refined_commodity(rho60) if commodity == "refined" else COMMODITIES[commodity]
    assert group is not None
    return (group.k0, group.k1, group.k2)


def ctl_cpl_60(
    rho60: float,
    temperature: float,
    pressure: float = 0.0,
    *,
    commodity: str = "crude",
    alpha60: float | None = None,
    equilibrium_pressure: float = 0.0,
) -> tuple[float, float, str | None]:
    """CTL and CPL from 60 °F and 0 psig to `temperature` (K) and gauge `pressure` (Pa).

    ρ(T, P) = ρ60 · CTL · CPL. Returns (CTL, CPL, flag). A negative gauge pressure is taken
    as 0 psig, as the standard does (its Example 3: fuel oil at −7.3 psig, CPL 1.000000),
    and flagged; so is a pressure below the equilibrium pressure.
    """
    k0, k1, k2 = _alpha_constants(commodity, rho60, alpha60)
    t_f = _f_from_k(temperature)
    t68 = its90_to_ipts68_f(t_f)
    # The standard shifts ρ60 so its IPTS-68 correlation holds on ITS-90 temperatures.
    a = _DELTA60 / 2.0 * ((k0 / rho60 + k1) / rho60 + k2)
    b = (2.0 * k0 + k1 * rho60) / (k0 + (k1 + k2 * rho60) * rho60)
    rho_star = rho60 * (
        1.0 + (math.exp(a * (1.0 + 0.8 * a)) - 1.0) / (1.0 + a * (1.0 + 1.6 * a) * b)
    )
    alpha = (k0 / rho_star + k1) / rho_star + k2
    dt = t68 - _T60_68
    ctl = math.exp(-alpha * dt * (1.0 + 0.8 * alpha * (dt + _DELTA60)))
    fp = math.exp(-1.9947 + 0.00013427 * t68 + (793920.0 + 2326.0 * t68) / rho_star**2)
    p_psig = pressure / PSI
    pe_psig = max(equilibrium_pressure / PSI, 0.0)
    cpl = 1.0 / (1.0 - 1e-5 * fp * (max(p_psig, 0.0) - pe_psig))
    return ctl, cpl, _api_flag(commodity, rho60, t_f, p_psig, alpha60, pe_psig)


def _api_flag(
    commodity: str,
    rho60: float,
    t_f: float,
    p_psig: float,
    alpha60: float | None,
    pe_psig: float = 0.0,
) -> str | None:
    problems = []
    if commodity == "special":
        assert alpha60 is not None
        if not _ALPHA_MIN <= alpha60 <= _ALPHA_MAX:
            problems.append(f"alpha60 {alpha60:.3g}/°F outside 230e-6..930e-6")
    else:
        group = COMMODITIES[commodity]
        low, high = (610.6, 1163.5) if group is None else (group.rho_min, group.rho_max)
        if not low <= rho60 <= high:
            problems.append(f"base density {rho60:.1f} kg/m3 outside {low}..{high}")
    if not _T_MIN_F <= t_f <= _T_MAX_F:
        problems.append(f"temperature {t_f:.1f} °F outside -58..302 °F")
    if p_psig < 0.0:
        problems.append(f"pressure {p_psig:.1f} psig below 0 psig, taken as 0 psig")
    elif p_psig > _P_MAX_PSIG:
        problems.append(f"pressure {p_psig:.0f} psig outside 0..1500 psig")
    if max(p_psig, 0.0) < pe_psig:
        problems.append(
            f"pressure {max(p_psig, 0.0):.1f} psig below the equilibrium pressure "
            f"{pe_psig:.1f} psig (not a single liquid phase)"
        )
    return "API 11.1: " + "; ".join(problems) if problems else None


_T15 = 288.15  # K
BASES = ("60F", "15C")


def _check_base(base: str) -> None:
    # Never a silent 15 °C for a base the standard does not have (a typo, "20C").
    if base not in BASES:
        raise ValueError(f"API 11.1 base must be 60F or 15C, not {base!r}")


def api_density(
    base_density: float,
    temperature: float,
    pressure: float = 0.0,
    *,
    commodity: str = "crude",
    base: str = "60F",
    alpha60: float | None = None,
) -> Density:
    """Line density from a base density (at 60 °F or 15 °C and 0 gauge) by API 11.1."""
    _check_base(base)
    rho60, flag60 = (
        (base_density, None)
        if base == "60F"
        else rho60_from_rho15(base_density, commodity=commodity, alpha60=alpha60)
    )
    ctl, cpl, flag = ctl_cpl_60(rho60, temperature, pressure, commodity=commodity, alpha60=alpha60)
    return Density(rho60 * ctl * cpl, flag or flag60)


def rho60_from_rho15(
    rho15: float, *, commodity: str = "crude", alpha60: float | None = None
) -> tuple[float, str | None]:
    """The 60 °F density of a product given at 15 °C: ρ15 = ρ60 · CTL(15 °C), solved for ρ60."""
    rho60 = rho15
    for _ in range(50):
        ctl, _cpl, flag = ctl_cpl_60(rho60, _T15, commodity=commodity, alpha60=alpha60)
        new = rho15 / ctl
        if abs(new - rho60) < 1e-9:
            return new, flag
        rho60 = new
    return rho60, "API 11.1: ρ60 from ρ15 did not converge"


def api_base_density(
    observed: float,
    temperature: float,
    pressure: float = 0.0,
    *,
    commodity: str = "crude",
    base: str = "60F",
    alpha60: float | None = None,
) -> Density:
    """Base density (60 °F or 15 °C, 0 gauge) from a density observed at T and P: the
    iteration of the standard, for Coriolis meters that report line density."""
    _check_base(base)
    rho60, converged, flag = _solve_base(observed, temperature, pressure, commodity, alpha60)
    group = COMMODITIES.get(commodity)
    low, high = (610.6, 1163.5) if group is None else (group.rho_min, group.rho_max)
    if commodity != "special" and not (converged and low <= rho60 <= high):
        # Far outside the standard's range ρ·CTL·CPL folds back: a second, unphysical root.
        # Prefer the one inside the commodity's range when there is one.
        inside = _bisect_base(observed, temperature, pressure, commodity, alpha60, low, high)
        if inside is not None:
            rho60 = inside
            converged = True
            flag = ctl_cpl_60(rho60, temperature, pressure, commodity=commodity)[2]
    if not converged and commodity == "refined":
        # Near a boundary between refined groups the iteration can hop from one group's
        # constants to the other's. Solve within each group; keep the solution that lies in
        # its own group's range.
        for group_name in ("gasoline", "transition", "jet", "fuel_oil"):
            limits = COMMODITIES[group_name]
            assert limits is not None
            candidate, ok, group_flag = _solve_base(
                observed, temperature, pressure, group_name, alpha60
            )
            if ok and limits.rho_min <= candidate <= limits.rho_max:
                rho60, converged, flag = candidate, True, group_flag
                break
    if not converged:
        flag = "API 11.1: base density iteration did not converge"
    if base == "60F":
        return Density(rho60, flag)
    ctl15, _cpl, flag15 = ctl_cpl_60(rho60, _T15, commodity=commodity, alpha60=alpha60)
    return Density(rho60 * ctl15, flag or flag15)


def _base_residual(
    observed: float, temperature: float, pressure: float, commodity: str, alpha60: float | None
) -> Callable[[float], tuple[float, str | None]]:
    """ρ60 ↦ (ρ60·CTL·CPL − observed, flag): what the base-density solvers drive to zero."""

    def residual(rho60: float) -> tuple[float, str | None]:
        try:
            ctl, cpl, flag = ctl_cpl_60(
                rho60, temperature, pressure, commodity=commodity, alpha60=alpha60
            )
        except (OverflowError, ZeroDivisionError):  # a step far outside any liquid
            return math.nan, None
        return rho60 * ctl * cpl - observed, flag

    return residual


def _solve_base(
    observed: float, temperature: float, pressure: float, commodity: str, alpha60: float | None
) -> tuple[float, bool, str | None]:
    """ρ60 with ρ60·CTL·CPL = observed: a few fixed-point steps, then the secant method. The
    plain fixed point contracts by only ~0.7 per step for light products far from 60 °F."""

    residual = _base_residual(observed, temperature, pressure, commodity, alpha60)
    previous = x = observed
    flag: str | None = None
    for _ in range(3):
        f, flag = residual(x)
        if not (math.isfinite(f) and f + observed > 0):
            return x, False, flag
        previous, x = x, observed * x / (f + observed)
    f_previous, _ = residual(previous)
    for _ in range(50):
        f, flag = residual(x)
        if not math.isfinite(f):
            break
        if abs(f) < 1e-10 * observed:
            return x, True, flag
        if f == f_previous:
            break
        previous, x, f_previous = x, x - f * (x - previous) / (f - f_previous), f
    return x, False, flag


def _bisect_base(
    observed: float,
    temperature: float,
    pressure: float,
    commodity: str,
    alpha60: float | None,
    low: float,
    high: float,
) -> float | None:
    """The root of ρ60·CTL·CPL = observed inside [low, high], when it is bracketed there."""

    residual = _base_residual(observed, temperature, pressure, commodity, alpha60)
    f_low = residual(low)[0]
    if f_low * residual(high)[0] > 0:
        return None
    for _ in range(80):
        mid = 0.5 * (low + high)
        f_mid = residual(mid)[0]
        if (f_mid < 0) == (f_low < 0):
            low, f_low = mid, f_mid
        else:
            high = mid
    return 0.5 * (low + high)


# --- water: IAPWS-IF97 region 1 ---------------------------------------------------------------

_IF97_R = 461.526  # J/(kg·K)
# (I, J, n) of the region 1 Gibbs free energy, IAPWS R7-97(2012) table 2.
_IF97_1 = (
    (0, -2, 0.14632971213167),
    (0, -1, -0.84548187169114),
    (0, 0, -0.37563603672040e1),
    (0, 1, 0.33855169168385e1),
    (0, 2, -0.95791963387872),
    (0, 3, 0.15772038513228),
    (0, 4, -0.16616417199501e-1),
    (0, 5, 0.81214629983568e-3),
    (1, -9, 0.28319080123804e-3),
    (1, -7, -0.60706301565874e-3),
    (1, -1, -0.18990068218419e-1),
    (1, 0, -0.32529748770505e-1),
    (1, 1, -0.21841717175414e-1),
    (1, 3, -0.52838357969930e-4),
    (2, -3, -0.47184321073267e-3),
    (2, 0, -0.30001780793026e-3),
    (2, 1, 0.47661393906987e-4),
    (2, 3, -0.44141845330846e-5),
    (2, 17, -0.72694996297594e-15),
    (3, -4, -0.31679644845054e-4),
    (3, 0, -0.28270797985312e-5),
    (3, 6, -0.85205128120103e-9),
    (4, -5, -0.22425281908000e-5),
    (4, -2, -0.65171222895601e-6),
    (4, 10, -0.14341729937924e-12),
    (5, -8, -0.40516996860117e-6),
    (8, -11, -0.12734301741641e-8),
    (8, -6, -0.17424871230634e-9),
    (21, -29, -0.68762131295531e-18),
    (23, -31, 0.14478307828521e-19),
    (29, -38, 0.26335781662795e-22),
    (30, -39, -0.11947622640071e-22),
    (31, -40, 0.18228094581404e-23),
    (32, -41, -0.93537087292458e-25),
)
# Saturation pressure (IF97 region 4), to tell liquid from vapour.
_IF97_4 = (
    0.11670521452767e4,
    -0.72421316703206e6,
    -0.17073846940092e2,
    0.12020824702470e5,
    -0.32325550322333e7,
    0.14915108613530e2,
    -0.48232657361591e4,
    0.40511340542057e6,
    -0.23855557567849,
    0.65017534844798e3,
)


def water_saturation_pressure(temperature: float) -> float:
    """Pa, IF97 region 4 (273.15 K to 647.096 K)."""
    n = _IF97_4
    theta = temperature + n[8] / (temperature - n[9])
    a = theta * theta + n[0] * theta + n[1]
    b = n[2] * theta * theta + n[3] * theta + n[4]
    c = n[5] * theta * theta + n[6] * theta + n[7]
    return float((2.0 * c / (-b + math.sqrt(b * b - 4.0 * a * c))) ** 4 * 1e6)


def water(temperature: float, pressure: float) -> Density:
    """Liquid water at `temperature` (K) and absolute `pressure` (Pa)."""
    pi = pressure / 16.53e6
    tau = 1386.0 / temperature
    gamma_pi = 0.0
    for i, j, n in _IF97_1:
        gamma_pi -= n * i * (7.1 - pi) ** (i - 1) * (tau - 1.222) ** j
    density = pressure / (_IF97_R * temperature * pi * gamma_pi)
    problems = []
    if not 273.15 <= temperature <= 373.15:
        problems.append(f"temperature {temperature - 273.15:.1f} °C outside 0..100 °C")
    if not 1e5 <= pressure <= 100e5:
        problems.append(f"pressure {pressure / 1e5:.2f} bar outside 1..100 bar (absolute)")
    elif temperature >= 273.15 and pressure < water_saturation_pressure(min(temperature, 647.0)):
        problems.append("below the saturation pressure: the water boils")
    return Density(density, "water: " + "; ".join(problems) if problems else None)


# --- other liquids ----------------------------------------------------------------------------


def quadratic(
    temperature: float,
    *,
    reference: float,
    reference_temperature: float,
    expansion: float,
    expansion2: float,
) -> Density:
    """ρ = ρref / (1 + β·ΔT + β2·ΔT²), ΔT = T − Tref: for liquids whose expansion grows with T."""
    dt = temperature - reference_temperature
    return Density(reference / (1.0 + expansion * dt + expansion2 * dt * dt))


# --- gases ---------------------------------------------------------------------------------------

R = 8.314462618  # J/(mol·K)


def gas(temperature: float, pressure: float, *, molar_mass: float, z: float) -> Density:
    """ρ = P·M/(Z·R·T); P absolute (Pa), M in kg/mol."""
    return Density(pressure * molar_mass / (z * R * temperature))


def virial_z(
    temperature: float,
    pressure: float,
    *,
    critical_temperature: float,
    critical_pressure: float,
    acentric_factor: float,
) -> float:
    """Z = 1 + B·P/(R·T), B from the Pitzer correlation (Abbott's B0 and B1)."""
    tr = temperature / critical_temperature
    b0 = 0.083 - 0.422 / math.pow(tr, 1.6)
    b1 = 0.139 - 0.172 / math.pow(tr, 4.2)
    b = (b0 + acentric_factor * b1) * R * critical_temperature / critical_pressure
    return 1.0 + b * pressure / (R * temperature)


def gas_virial(
    temperature: float,
    pressure: float,
    *,
    molar_mass: float,
    critical_temperature: float,
    critical_pressure: float,
    acentric_factor: float,
) -> Density:
    """A real gas through a second virial coefficient: within about 0.5 % of reference
    equations of state for natural gas, nitrogen and air up to a few MPa. Flagged where the
    truncated virial series stops holding: below the critical temperature, or at a reduced
    pressure above half the reduced temperature."""
    z = virial_z(
        temperature,
        pressure,
        critical_temperature=critical_temperature,
        critical_pressure=critical_pressure,
        acentric_factor=acentric_factor,
    )
    result = gas(temperature, pressure, molar_mass=molar_mass, z=z)
    tr = temperature / critical_temperature
    pr = pressure / critical_pressure
    flag = None
    if tr < 1.0 or pr > 0.5 * tr:
        flag = f"gas: virial Z outside its range (Tr {tr:.2f} < 1 or Pr {pr:.2f} > Tr/2)"
    return Density(result.value, flag)


def standard_volume(
    mass: float, *, molar_mass: float, temperature: float, pressure: float, z: float = 1.0
) -> float:
    """m³ at the stated standard conditions (e.g. 15 °C and 101.325 kPa) for `mass` kg."""
    return mass / gas(temperature, pressure, molar_mass=molar_mass, z=z).value
