"""`massgate density`: what the agent computes for a density model, for one set of conditions.

For checking a flow computer, a lab value or a vendor's sheet against massgate, with the
configuration's unit syntax ("850 kg/m3", "100 degF", "5 bar"). Pressure is gauge, as the
configuration's pressure tags are. A bad input is one line and exit 2, as everywhere.
"""

from __future__ import annotations

import argparse
import json
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
        "11.1 for crude oil and refined products (with CTL, CPL and CTPL), or IAPWS-IF97 for "
        "water. Values take the configuration's units ('850 kg/m3', '100 degF', '5 bar'); "
        "pressure is gauge, as the configuration's pressure tags are. An input outside the "
        "model's range is computed and flagged, as in the agent. Exit 0, or 2 for a bad input."
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


def _conditions(p: argparse.ArgumentParser) -> None:
    """What every model takes: the line's temperature and gauge pressure, and --json."""
    p.add_argument(
        "--temperature",
        required=True,
        type=_quantity(units.TEMPERATURE),
        help="the line's, e.g. '100 degF' or '40 degC'",
    )
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
        print(json.dumps(result, indent=1))
        return EXIT_OK
    labels = {
        "density": "density, kg/m3",
        "ctl": "CTL",
        "cpl": "CPL",
        "ctpl": "CTPL",
        "density_60f": "base density at 60 degF, kg/m3",
    }
    for key in shown:
        digits = 4 if "density" in key else 8
        print(f"{labels[key]:<34}{result[key]:.{digits}f}")
    for flag in result["flags"]:
        print(f"flag: {flag}")
    return EXIT_OK


def _bad(message: str) -> int:
    import sys  # noqa: PLC0415

    print(f"massgate density: error: {message} (see massgate density --help)", file=sys.stderr)
    return EXIT_BAD_CONFIG
