"""Density models against independent references: IAPWS-95 and reference gas equations of
state (CoolProp), API MPMS 11.1 against a separate step-by-step implementation of the
standard's procedure in decimal arithmetic, and the properties the standard implies."""

from __future__ import annotations

import itertools
import math
from decimal import Decimal, getcontext

import pytest
from CoolProp.CoolProp import PropsSI
from hypothesis import given, settings
from hypothesis import strategies as st

from massgate.agent.totalize import density, kernels

BAR = 1e5


# --- water ----------------------------------------------------------------------------------


def test_if97_region1_check_value():
    # IAPWS R7-97 table 5: v(300 K, 3 MPa) = 0.100215168e-2 m³/kg.
    assert 1 / density.water(300.0, 3e6).value == pytest.approx(0.100215168e-2, rel=1e-9)


def test_water_within_0_01_percent_of_iapws95_over_0_to_100_degc_and_1_to_100_bar():
    temperatures = [273.16, *(273.15 + c for c in range(5, 100, 5)), 373.1]
    pressures = [1 * BAR, 2 * BAR, 5 * BAR, 10 * BAR, 25 * BAR, 50 * BAR, 75 * BAR, 100 * BAR]
    liquid = boiling = 0
    worst = 0.0
    for t, p in itertools.product(temperatures, pressures):
        result = density.water(t, p)
        if p < PropsSI("P", "T", t, "Q", 0, "Water"):
            assert result.flag is not None
            assert "boils" in result.flag
            boiling += 1
            continue
        reference = PropsSI("D", "T", t, "P", p, "Water")  # IAPWS-95
        worst = max(worst, abs(result.value / reference - 1))
        assert result.flag is None, (t, p, result.flag)
        liquid += 1
    assert worst <= 1e-4, f"worst deviation {worst:.2e}"
    assert liquid > 150
    assert boiling >= 1  # 99.95 °C at 1 bar


def test_water_saturation_pressure_matches_if97_and_iapws95():
    # IAPWS R7-97 table 35 check values.
    for t, mpa in ((300.0, 0.353658941e-2), (500.0, 0.263889776e1), (600.0, 0.123443146e2)):
        assert density.water_saturation_pressure(t) == pytest.approx(mpa * 1e6, rel=1e-8)
    for celsius in (0.01, 20, 50, 80, 99.6, 150):
        t = 273.15 + celsius
        reference = PropsSI("P", "T", t, "Q", 0, "Water")
        # IF97's line is within its stated 0.025 % of IAPWS-95; it only decides "boils".
        assert density.water_saturation_pressure(t) == pytest.approx(reference, rel=2.5e-4)


def test_water_outside_its_range_is_flagged_not_refused():
    hot = density.water(393.15, 5 * BAR)
    assert hot.flag is not None
    assert "outside 0..100 °C" in hot.flag
    assert hot.value > 0
    high = density.water(293.15, 150 * BAR)
    assert high.flag is not None
    assert "outside 1..100 bar" in high.flag


# --- gases ------------------------------------------------------------------------------------

GASES = {
    # CoolProp name: molar mass kg/mol, Tc K, Pc Pa, acentric factor
    "Methane": (0.01604246, 190.564, 4.5992e6, 0.01142),
    "Nitrogen": (0.0280134, 126.192, 3.3958e6, 0.0372),
    "Air": (0.0289647, 132.5306, 3.786e6, 0.0335),
    "CarbonDioxide": (0.0440098, 304.1282, 7.3773e6, 0.22394),
}


def test_virial_gas_within_one_percent_of_reference_equations_where_not_flagged():
    flagged = judged = 0
    for name, (m, tc, pc, omega) in GASES.items():
        for t, p in itertools.product(
            (253.15, 273.15, 288.15, 323.15, 373.15), (1, 5, 10, 20, 40, 60, 100)
        ):
            result = density.gas_virial(
                t,
                p * BAR,
                molar_mass=m,
                critical_temperature=tc,
                critical_pressure=pc,
                acentric_factor=omega,
            )
            if result.flag is not None:
                flagged += 1
                continue
            reference = PropsSI("D", "T", t, "P", p * BAR, name)
            assert result.value == pytest.approx(reference, rel=0.01), (name, t, p)
            judged += 1
    assert judged > 60
    assert flagged > 10  # CO2 below its critical temperature, everything at 100 bar


def test_ideal_gas_and_standard_volume():
    m, _, _, _ = GASES["Nitrogen"]
    at_1_bar = density.gas(288.15, 101325.0, molar_mass=m, z=1.0).value
    assert at_1_bar == pytest.approx(PropsSI("D", "T", 288.15, "P", 101325.0, "Nitrogen"), rel=1e-3)
    volume = density.standard_volume(100.0, molar_mass=m, temperature=288.15, pressure=101325.0)
    assert volume == pytest.approx(100.0 / at_1_bar)


# --- other liquids --------------------------------------------------------------------------


@settings(deadline=None)  # the first call loads (or compiles) the numba kernel
@given(st.floats(250.0, 450.0), st.floats(0.0, 1e-3))
def test_quadratic_without_its_square_term_is_linear(t, beta):
    kw = {"reference": 998.2, "reference_temperature": 293.15, "expansion": beta}
    linear = kernels.linear_density(t, 0.0, 998.2, 293.15, beta, 0.0)
    assert density.quadratic(t, expansion2=0.0, **kw).value == pytest.approx(linear, rel=1e-15)
    assert density.quadratic(293.15, expansion2=1e-6, **kw).value == 998.2


# --- API MPMS 11.1 --------------------------------------------------------------------------

getcontext().prec = 40
D = Decimal


def _reference_ctl_cpl(rho60: float, t_f: float, p_psig: float, k: tuple[float, ...]) -> tuple:
    """The standard's steps written out in decimal, independent of agent/totalize/density.py."""
    k0, k1, k2 = (D(repr(x)) for x in k)
    rho = D(repr(rho60))
    # ITS-90 → IPTS-68, explicit powers of τ.
    a = [D(x) for x in ("-0.148759", "-0.267408", "1.080760", "1.269056", "-4.089591",
                        "-1.871251", "7.438081", "-3.536296")]  # fmt: skip
    t_c = (D(repr(t_f)) - 32) / D("1.8")
    tau = t_c / 630
    shift = sum(a[i] * tau ** (i + 1) for i in range(8))
    t68 = (t_c - shift) * D("1.8") + 32
    delta60 = D("0.01374979547")
    big_a = delta60 / 2 * ((k0 / rho + k1) / rho + k2)
    big_b = (2 * k0 + k1 * rho) / (k0 + (k1 + k2 * rho) * rho)
    rho_star = rho * (1 + ((big_a * (1 + D("0.8") * big_a)).exp() - 1)
                      / (1 + big_a * (1 + D("1.6") * big_a) * big_b))  # fmt: skip
    alpha = (k0 / rho_star + k1) / rho_star + k2
    dt = t68 - D("60.0068749")
    ctl = (-alpha * dt * (1 + D("0.8") * alpha * (dt + delta60))).exp()
    fp = (D("-1.9947") + D("0.00013427") * t68 + (793920 + 2326 * t68) / rho_star**2).exp()
    cpl = 1 / (1 - D("1e-5") * fp * D(repr(p_psig)))
    return float(ctl), float(cpl)


def _kelvin(t_f: float) -> float:
    return (t_f - 32.0) / 1.8 + 273.15


COMMODITY_CASES = [
    ("crude", density.CRUDE),
    ("gasoline", density.GASOLINE),
    ("transition", density.TRANSITION),
    ("jet", density.JET),
    ("fuel_oil", density.FUEL_OIL),
    ("lube", density.LUBE),
]


@settings(max_examples=300)
@given(
    st.sampled_from(COMMODITY_CASES),
    st.floats(0.0, 1.0),
    st.floats(-58.0, 302.0),
    st.floats(0.0, 1500.0),
)
def test_api_ctl_cpl_match_the_standards_procedure(case, where, t_f, p_psig):
    name, group = case
    rho60 = group.rho_min + where * (group.rho_max - group.rho_min)
    ctl, cpl, flag = density.ctl_cpl_60(rho60, _kelvin(t_f), p_psig * density.PSI, commodity=name)
    ref_ctl, ref_cpl = _reference_ctl_cpl(rho60, t_f, p_psig, (group.k0, group.k1, group.k2))
    assert ctl == pytest.approx(ref_ctl, rel=1e-12)
    assert cpl == pytest.approx(ref_cpl, rel=1e-12)
    assert flag is None


@given(st.floats(610.6, 1163.5))
def test_at_60_f_and_zero_gauge_the_corrections_are_one(rho60):
    ctl, cpl, _flag = density.ctl_cpl_60(rho60, _kelvin(60.0), 0.0, commodity="crude")
    assert ctl == pytest.approx(1.0, abs=1e-9)
    assert cpl == 1.0


@given(st.floats(650.0, 1100.0), st.floats(-50.0, 300.0), st.floats(0.0, 1500.0))
def test_observed_to_base_and_back_round_trips(rho60, t_f, p_psig):
    t, p = _kelvin(t_f), p_psig * density.PSI
    for base in ("60F", "15C"):
        observed = density.api_density(rho60, t, p, commodity="refined", base=base).value
        back = density.api_base_density(observed, t, p, commodity="refined", base=base)
        assert back.flag is None
        # At a boundary between refined groups the two groups' corrections differ by a hair
        # (the standard's constants are rounded), so a base density there has two
        # self-consistent solutions, 1e-8 apart.
        assert back.value == pytest.approx(rho60, rel=5e-8)


@pytest.mark.parametrize("boundary", [770.352, 787.5195, 838.3127])
def test_base_density_at_refined_group_boundaries_converges(boundary):
    for eps, t_f, p_psig in itertools.product(
        (-1e-3, -1e-6, 0.0, 1e-6, 1e-3), range(-50, 301, 25), (0, 1500)
    ):
        t, p = _kelvin(t_f), p_psig * density.PSI
        observed = density.api_density(boundary + eps, t, p, commodity="refined").value
        back = density.api_base_density(observed, t, p, commodity="refined")
        assert back.flag is None, (eps, t_f, p_psig)
        assert back.value == pytest.approx(boundary + eps, rel=5e-8)


@given(st.floats(650.0, 1100.0))
def test_a_15_c_base_density_is_the_density_at_15_c(rho15):
    at_15 = density.api_density(rho15, 288.15, 0.0, commodity="crude", base="15C")
    assert at_15.value == pytest.approx(rho15, rel=1e-10)


@given(st.floats(610.6, 1163.5), st.floats(-58.0, 301.0))
def test_hotter_oil_is_lighter(rho60, t_f):
    colder = density.api_density(rho60, _kelvin(t_f), commodity="crude").value
    hotter = density.api_density(rho60, _kelvin(t_f + 1.0), commodity="crude").value
    assert hotter < colder


def test_refined_products_pick_their_group_by_density():
    assert density.refined_commodity(700.0) is density.GASOLINE
    assert density.refined_commodity(780.0) is density.TRANSITION
    assert density.refined_commodity(800.0) is density.JET
    assert density.refined_commodity(900.0) is density.FUEL_OIL
    ctl_refined, _, _ = density.ctl_cpl_60(800.0, 320.0, commodity="refined")
    ctl_jet, _, _ = density.ctl_cpl_60(800.0, 320.0, commodity="jet")
    assert ctl_refined == ctl_jet


def test_special_applications_use_the_given_expansion():
    alpha = 500e-6  # 1/°F
    ctl, _, flag = density.ctl_cpl_60(900.0, _kelvin(100.0), commodity="special", alpha60=alpha)
    assert flag is None
    ref_ctl, _ = _reference_ctl_cpl(900.0, 100.0, 0.0, (0.0, 0.0, alpha))
    assert ctl == pytest.approx(ref_ctl, rel=1e-12)
    with pytest.raises(ValueError, match="alpha60"):
        density.ctl_cpl_60(900.0, 300.0, commodity="special")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"rho60": 500.0, "temperature": _kelvin(60.0)}, "base density 500.0 kg/m3 outside"),
        ({"rho60": 850.0, "temperature": _kelvin(320.0)}, "temperature 320.0 °F outside"),
        ({"rho60": 850.0, "temperature": 300.0, "pressure": 2000 * density.PSI}, "2000 psig"),
        (
            {"rho60": 850.0, "temperature": 300.0, "commodity": "special", "alpha60": 1e-3},
            "alpha60 0.001/°F outside",
        ),
    ],
)
def test_api_inputs_outside_the_standard_are_flagged(kwargs, expected):
    _, _, flag = density.ctl_cpl_60(**kwargs)
    assert flag is not None
    assert expected in flag
    assert math.isfinite(density.ctl_cpl_60(**kwargs)[0])


@given(st.floats(838.4, 1163.5), st.floats(-58.0, 302.0), st.floats(-14.6, -1e-6))
def test_a_negative_gauge_pressure_is_taken_as_zero_psig_and_flagged(rho60, t_f, p_psig):
    """API 11.1 sets a gauge pressure below zero to 0 psig: its Example 3 (a fuel oil at
    −7.3 psig) has CPL 1.000000; computing with −7.3 psig gave 0.999972."""
    ctl, cpl, flag = density.ctl_cpl_60(
        rho60, _kelvin(t_f), p_psig * density.PSI, commodity="fuel_oil"
    )
    ctl0, cpl0, _flag0 = density.ctl_cpl_60(rho60, _kelvin(t_f), 0.0, commodity="fuel_oil")
    assert (ctl, cpl) == (ctl0, cpl0)
    assert cpl == 1.0
    assert flag is not None
    assert "below 0 psig, taken as 0 psig" in flag


def test_example_3_fuel_oil_at_minus_7_3_psig_has_cpl_one():
    _ctl, cpl, flag = density.ctl_cpl_60(
        900.0, _kelvin(100.0), -7.3 * density.PSI, commodity="fuel_oil"
    )
    assert f"{cpl:.6f}" == "1.000000"
    assert flag is not None
    assert "-7.3 psig" in flag


def test_a_pressure_below_the_equilibrium_pressure_is_flagged():
    kwargs = {"commodity": "gasoline", "equilibrium_pressure": 50 * density.PSI}
    _, _, below = density.ctl_cpl_60(700.0, _kelvin(80.0), 20 * density.PSI, **kwargs)
    _, _, above = density.ctl_cpl_60(700.0, _kelvin(80.0), 80 * density.PSI, **kwargs)
    assert below is not None
    assert "below the equilibrium pressure 50.0 psig" in below
    assert above is None


@pytest.mark.parametrize("base", ["20C", "60f", "15 C", ""])
def test_a_base_other_than_60f_or_15c_is_an_error_not_a_silent_15c(base):
    with pytest.raises(ValueError, match="60F or 15C"):
        density.api_density(850.0, 300.0, base=base)
    with pytest.raises(ValueError, match="60F or 15C"):
        density.api_base_density(850.0, 300.0, base=base)
