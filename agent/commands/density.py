"""`massgate density`: what the agent computes for a density model, for one set of conditions.

For checking a flow computer, a lab value or a vendor's sheet against massgate, with the
configuration's unit syntax ("850 kg/m3", "100 degF", "5 bar"). Pressure is gauge for api and
water, as the configuration's pressure tags are, and absolute for gas, as gas standards state
it. A bad input is one line and exit 2, as everywhere.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from typing import Any

from ..core import units
from .common import EXIT_BAD_CONFIG, EXIT_OK

ATMOSPHERE = 101_325.0  # Pa: what a gauge pressure is added to, unless --atmosphere says


def _quantity(dimension: str) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            return units.parse_quantity(text, dimension)
        except units.UnitError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = dimension
    return convert


def setup(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Compute a density as the agent does, for one temperature and pressure: API MPMS "
        "11.1 for crude oil and refined products (with CTL, CPL and CTPL), IAPWS-IF97 for "
        "water, or a gas by its composition (AGA8 GERG-2008 or DETAIL, virial, ideal). Values "
        "take the configuration's units ('850 kg/m3', '100 degF', '5 bar'); pressure is gauge "
        "for api and water, as the configuration's pressure tags are, and absolute for gas. "
        "An input outside the model's range is computed and flagged, as in the agent. Exit 0, "
        "or 2 for a bad input."
    )
    sub = p.add_subparsers(dest="model", required=True, metavar="MODEL")
    api = sub.add_parser(
        "api",
        help="API MPMS 11.1: a base density (60 °F or 15 °C) at line temperature and pressure",
        description=(
            "Line density from a base density by API MPMS 11.1 (2004): CTL, CPL and CTPL. "
            "A negative gauge pressure is taken as 0 psig, as the standard does, and flagged."
        ),
    )
    from ..totalize.density import BASES, COMMODITIES  # noqa: PLC0415

    api.add_argument("--commodity", required=True, choices=sorted(COMMODITIES))
    api.add_argument(
        "--base-density", required=True, type=_quantity(units.DENSITY), metavar="DENSITY"
    )
    api.add_argument("--base", choices=BASES, default="60F", help="the base's temperature")
    _conditions(api)
    api.add_argument(
        "--equilibrium-pressure",
        type=_quantity(units.PRESSURE),
        default=0.0,
        help="gauge; the liquid's vapour pressure (default 0)",
    )
    api.add_argument(
        "--alpha60",
        type=_quantity(units.PER_KELVIN),
        help="thermal expansion at 60 °F, e.g. '4.5e-4 1/degF' (commodity special)",
    )
    api.set_defaults(func=api_main)
    water = sub.add_parser(
        "water",
        help="liquid water by IAPWS-IF97",
        description="Liquid water by IAPWS-IF97 region 1, as the agent's water model.",
    )
    _conditions(water)
    water.add_argument(
        "--atmosphere",
        type=_quantity(units.PRESSURE),
        default=ATMOSPHERE,
        help="added to the gauge pressure (default 101.325 kPa)",
    )
    water.set_defaults(func=water_main)
    gas = sub.add_parser(
        "gas",
        help="a gas by its composition: AGA8 GERG-2008 or DETAIL, virial, ideal",
        description=(
            "Density, Z and molar mass of a gas from its mole fractions, at the line's "
            "temperature and absolute pressure, and at the standard conditions its standard "
            "volume is stated at (Z there from the same equation). GERG-2008 and DETAIL are "
            "AGA Report No. 8 (2017) through pyaga8 (massgate[aga8]); virial is a second "
            "virial coefficient at Kay's pseudo-critical point; ideal is Z = 1."
        ),
    )
    from ..totalize.gas import COMPONENTS, EQUATIONS  # noqa: PLC0415

    gas.add_argument("--model", required=True, choices=EQUATIONS, help="the equation")
    gas.add_argument(
        "--composition",
        required=True,
        type=_composition,
        help="mole fractions by AGA8's names, summing to 1 within 1e-4, e.g. "
        "'methane=0.9,ethane=0.05,propane=0.02,nitrogen=0.02,carbon_dioxide=0.01' (or "
        f"'methane=90 %%'); the names: {', '.join(COMPONENTS)}",
    )
    _conditions(gas, absolute=True)
    gas.add_argument(
        "--standard-temperature",
        type=_quantity(units.TEMPERATURE),
        default=288.15,
        help="of the standard volume (default 15 degC)",
    )
    gas.add_argument(
        "--standard-pressure",
        type=_quantity(units.PRESSURE),
        default=ATMOSPHERE,
        help="of the standard volume, absolute (default 101.325 kPa)",
    )
    gas.set_defaults(func=gas_main)


def _composition(text: str) -> Any:
    from ..totalize.gas import Composition, CompositionError  # noqa: PLC0415

    try:
        return Composition.from_text(text)
    except CompositionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _conditions(p: argparse.ArgumentParser, *, absolute: bool = False) -> None:
    """What every model takes: the line's temperature and pressure, and --json. A liquid's
    pressure is gauge (default 0), as the configuration's tags; a gas's is absolute and
    required, as gas standards state it."""
    p.add_argument(
        "--temperature",
        required=True,
        type=_quantity(units.TEMPERATURE),
        help="the line's, e.g. '100 degF' or '40 degC'",
    )
    if absolute:
        p.add_argument(
            "--pressure",
            required=True,
            type=_quantity(units.PRESSURE),
            help="the line's, absolute, e.g. '70 bar'",
        )
    else:
        p.add_argument(
            "--pressure", type=_quantity(units.PRESSURE), default=0.0, help="gauge (default 0)"
        )
    p.add_argument("--json", action="store_true", help="a JSON object instead of a table")


def api_main(args: argparse.Namespace) -> int:
    from ..totalize import density  # noqa: PLC0415

    alpha60 = None if args.alpha60 is None else args.alpha60 * 5 / 9  # 1/K -> 1/°F
    if args.commodity == "special" and alpha60 is None:
        return _bad("--commodity special needs --alpha60")
    if args.commodity != "special" and alpha60 is not None:
        return _bad("--alpha60 is for --commodity special only")
    if args.base == "60F":
        rho60, flag60 = args.base_density, None
    else:
        rho60, flag60 = density.rho60_from_rho15(
            args.base_density, commodity=args.commodity, alpha60=alpha60
        )
    ctl, cpl, flag = density.ctl_cpl_60(
        rho60,
        args.temperature,
        args.pressure,
        commodity=args.commodity,
        alpha60=alpha60,
        equilibrium_pressure=args.equilibrium_pressure,
    )
    result = {
        "model": "api",
        "commodity": args.commodity,
        "base": args.base,
        "base_density": args.base_density,
        "density_60f": rho60,
        "temperature_k": args.temperature,
        "pressure_pa_gauge": args.pressure,
        "ctl": ctl,
        "cpl": cpl,
        "ctpl": ctl * cpl,
        "density": rho60 * ctl * cpl,
        "flags": _flags(flag60, flag),
    }
    return _show(result, args.json, ("density", "ctl", "cpl", "ctpl", "density_60f"))


def water_main(args: argparse.Namespace) -> int:
    from ..totalize import density  # noqa: PLC0415

    absolute = args.pressure + args.atmosphere
    if absolute <= 0:
        return _bad(f"the absolute pressure is {absolute:g} Pa: give a gauge pressure above -1 atm")
    found = density.water(args.temperature, absolute)
    result = {
        "model": "water",
        "temperature_k": args.temperature,
        "pressure_pa_gauge": args.pressure,
        "pressure_pa_absolute": absolute,
        "density": found.value,
        "flags": _flags(found.flag),
    }
    return _show(result, args.json, ("density",))


def gas_main(args: argparse.Namespace) -> int:
    from ..totalize import gas  # noqa: PLC0415

    if args.model in gas.AGA8_EQUATIONS and (missing := gas.aga8_available()) is not None:
        return _bad(missing, "density gas")
    for name in ("pressure", "standard_pressure"):
        if not getattr(args, name) > 0:
            option = "--" + name.replace("_", "-")
            return _bad(
                f"{option} is absolute here and must be above 0, got {getattr(args, name):g} Pa",
                "density gas",
            )
    found = gas.gas(args.model, args.composition)
    line = found.state(args.temperature, args.pressure)
    standard = found.state(args.standard_temperature, args.standard_pressure)
    flags, base_flags = _flags(line.flag), _flags(standard.flag)
    result = {
        "model": args.model,
        "composition": dict(args.composition.items()),
        "temperature_k": args.temperature,
        "pressure_pa_absolute": args.pressure,
        "density": line.density,
        "z": line.z,
        "molar_mass": line.molar_mass,
        "standard_temperature_k": args.standard_temperature,
        "standard_pressure_pa_absolute": args.standard_pressure,
        "standard_density": standard.density,
        "standard_z": standard.z,
        "flags": flags + [f"at standard conditions: {f}" for f in base_flags if f not in flags],
    }
    return _show(
        result, args.json, ("density", "z", "molar_mass", "standard_density", "standard_z")
    )


def _flags(*flags: str | None) -> list[str]:
    """Each model's flag is 'model: problem; problem': one line per problem."""
    out: list[str] = []
    for flag in flags:
        if flag:
            head, _, rest = flag.partition(": ")
            out += [f"{head}: {p}" for p in rest.split("; ")] if rest else [flag]
    return out


def _show(result: dict[str, Any], as_json: bool, shown: tuple[str, ...]) -> int:
    if as_json:
        # No NaN in JSON: a value an equation could not find is null (its flag says why).
        clean = {
            k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in result.items()
        }
        print(json.dumps(clean, indent=1, allow_nan=False))
        return EXIT_OK
    labels = {
        "density": "density, kg/m3",
        "ctl": "CTL",
        "cpl": "CPL",
        "ctpl": "CTPL",
        "density_60f": "base density at 60 degF, kg/m3",
        "z": "Z",
        "molar_mass": "molar mass, g/mol",
        "standard_density": "density at standard conditions, kg/m3",
        "standard_z": "Z at standard conditions",
    }
    for key in shown:
        digits = 4 if "density" in key else 8
        value = result[key] * 1000 if key == "molar_mass" else result[key]
        print(f"{labels[key]:<40}{value:.{digits}f}")
    for flag in result["flags"]:
        print(f"flag: {flag}")
    return EXIT_OK


def _bad(message: str, command: str = "density") -> int:
    import sys  # noqa: PLC0415

    print(f"massgate {command}: error: {message} (see massgate {command} --help)", file=sys.stderr)
    return EXIT_BAD_CONFIG
