"""The plant's sections: `streams` (mass across a boundary, one meter each), `inventories`
(mass held inside) and the density models both use."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from ..core import units, values
from ..core.values import DAY
from ..core.yamlsource import (
    Invalid,
    Section,
    boolean,
    choice,
    name,
    number,
    quantity,
    text,
)
from ..totalize import density as density_models
from .model import (
    API_COMMODITIES,
    DENSITY_MODELS,
    ENTERED,
    MAX_ACCURACY,
    MAX_DENSITY,
    MAX_EXPANSION,
    REVERSE_MODES,
    Config,
    DensityModel,
    InventoryConfig,
    ManualStreamConfig,
    StreamConfig,
)


def with_rollover(stream: StreamConfig, config: Config) -> StreamConfig:
    """A total's rollover, unless given: where its point wraps (an integer register at
    2^bits counts; a float is taken not to wrap)."""
    if stream.mass_total is None or not math.isnan(stream.rollover):
        return stream
    span = next(
        (p.rollover for d in config.devices for p in d.points if p.tag == stream.mass_total),
        math.inf,
    )
    return replace(stream, rollover=span)


_density_quantity = quantity(units.DENSITY, positive=True, maximum=MAX_DENSITY)
# Kelvin: from what cryogenic service needs to what no liquid or gas meter sees.
_temperature = quantity(units.TEMPERATURE, minimum=1.0, maximum=2000.0)


def parse_density(s: Section | None) -> DensityModel | None:
    if s is None:
        return None
    model = s.take("model", choice(*DENSITY_MODELS), "linear")
    common: dict[str, Any] = {"model": model, "temperature": None}
    if model != "constant":
        common["temperature"] = s.take("temperature", values.tag)
    if model in ("linear", "water", "api", "gas"):
        common["pressure"] = s.take("pressure", values.tag, None)
        common["pressure_absolute"] = s.take("pressure_absolute", boolean, False)
        common["atmosphere"] = s.take(
            "atmosphere", quantity(units.PRESSURE, minimum=50e3, maximum=120e3), 101325.0
        )
    if model in ("constant", "linear", "quadratic"):
        common["reference"] = s.take("reference", _density_quantity)
        common["reference_temperature"] = 288.15
        common["expansion"] = 0.0
        if model != "constant":
            common["reference_temperature"] = s.take("at", _temperature)
            common["expansion"] = s.take(
                "expansion", quantity(units.PER_KELVIN, minimum=0.0, maximum=MAX_EXPANSION)
            )
        if model == "quadratic":
            common["expansion2"] = s.take("expansion2", _coefficient)
        if model == "linear":
            common["compressibility"] = s.take(
                "compressibility", quantity(units.PER_PASCAL, minimum=0.0), 0.0
            )
            if common["compressibility"] and common["pressure"] is None and s.ok:
                s.fail("compressibility", "needs a 'pressure' tag to correct for")
    elif model == "water":
        common["reference"] = density_models.water(293.15, 101325.0).value
        common["reference_temperature"] = 293.15
        common["expansion"] = 0.0
    elif model == "api":
        common["commodity"] = s.take("commodity", choice(*API_COMMODITIES), "crude")
        common["base"] = s.take("base", choice("60F", "15C"), "60F")
        common["reference"] = s.take("base_density", _density_quantity)
        common["reference_temperature"] = 288.15 if common["base"] == "15C" else 288.7055556
        common["expansion"] = 0.0
        if common["commodity"] == "special":
            common["alpha60"] = s.take(
                "alpha60", quantity(units.PER_KELVIN, positive=True, maximum=MAX_EXPANSION)
            )
            if common["alpha60"] is not None:
                common["alpha60"] /= 1.8  # the standard's α60 is per °F
    elif s.has("composition") or s.has("equation"):
        _gas_by_composition(s, common)
    else:  # gas by molar mass and Z
        common["molar_mass"] = s.take("molar_mass", _molar_mass)
        common["z"] = s.take("z", _compressibility_factor, None)
        if common["z"] is None:
            # Helium's critical point is the lowest (5.2 K, 0.23 MPa) of any gas.
            common["critical_temperature"] = s.take(
                "critical_temperature", quantity(units.TEMPERATURE, minimum=5.0, maximum=2000.0)
            )
            common["critical_pressure"] = s.take(
                "critical_pressure", quantity(units.PRESSURE, minimum=1e5, maximum=1e9)
            )
            common["acentric_factor"] = s.take("acentric_factor", _acentric_factor, 0.0)
        _gas_standard(s, common)
        if common["molar_mass"] is not None:
            common["reference"] = density_models.gas(
                288.15, 101325.0, molar_mass=common["molar_mass"], z=1.0
            ).value
    s.finish()
    if not s.ok or any(v is None for k, v in common.items() if k in _REQUIRED_DENSITY_KEYS):
        return None
    return DensityModel(**common)


def _gas_standard(s: Section, common: dict[str, Any]) -> None:
    """A gas's `standard` conditions (of its standard volume) and its nominal reference."""
    if (standard := s.section("standard", required=False)) is not None:
        common["standard_temperature"] = standard.take("temperature", _temperature, 288.15)
        common["standard_pressure"] = standard.take(
            "pressure", quantity(units.PRESSURE, minimum=1e3, maximum=1e7), 101325.0
        )
        standard.finish()
    common["reference_temperature"] = 288.15
    common["expansion"] = 0.0


_BY_MOLAR_MASS = ("molar_mass", "z", "critical_temperature", "critical_pressure")


def _gas_by_composition(s: Section, common: dict[str, Any]) -> None:
    """A gas by its 21 AGA8 mole fractions, through one of gas.EQUATIONS."""
    from ..totalize import gas  # noqa: PLC0415

    common["equation"] = equation = s.take("equation", choice(*gas.EQUATIONS), "gerg2008")
    composition = s.take("composition", _composition)
    for key in (*_BY_MOLAR_MASS, "acentric_factor"):
        if s.has(key):
            s.take(key, lambda v: v)
            s.fail(key, "a gas given by its composition takes this from its equation: remove it")
    if equation in gas.AGA8_EQUATIONS and (missing := gas.aga8_available()) is not None:
        s.fail("equation", missing)
    _gas_standard(s, common)
    if isinstance(composition, str) and s.ok:
        # Live from a gas chromatograph (checked against the devices in crosscheck): its
        # nominal reference is methane's, for cut-offs and tolerances only.
        common["composition_device"] = composition
        common["reference"] = density_models.gas(
            288.15, 101325.0, molar_mass=0.01604246, z=1.0
        ).value
    elif composition is not None and s.ok:
        common["composition"] = composition
        common["molar_mass"] = composition.molar_mass
        common["reference"] = density_models.gas(
            288.15, 101325.0, molar_mass=composition.molar_mass, z=1.0
        ).value


def _composition(value: Any) -> Any:
    """{component: mole fraction}, a fraction a plain number or with a unit ('90 %'); or the
    name of the gas chromatograph that analyzes the gas."""
    from ..totalize import gas  # noqa: PLC0415

    if isinstance(value, str):
        return name(value)
    if not isinstance(value, dict) or not value:
        raise Invalid(
            "expected a mapping of AGA8 component names to mole fractions, e.g. "
            "{methane: 0.9, ethane: 0.06, nitrogen: 0.04}, or the name of the gas "
            "chromatograph device that analyzes the gas"
        )
    try:
        return gas.Composition.parse({str(k): v for k, v in value.items()})
    except gas.CompositionError as exc:
        raise Invalid(str(exc)) from None


def _acentric_factor(value: Any) -> float:
    omega = number(value)
    if not -1.0 <= omega <= 2.0:
        raise Invalid(f"an acentric factor lies between -1 and 2, got {omega}")
    return omega


def _coefficient(value: Any) -> float:
    """A plain number; YAML reads '1e-6' (no dot) as text, which an engineer means as 1e-6."""
    if isinstance(value, str):
        try:
            result = float(value)
        except ValueError:
            raise Invalid(f"expected a number, got {value!r}") from None
        return number(result)
    return number(value)


_REQUIRED_DENSITY_KEYS = (
    "reference",
    "reference_temperature",
    "expansion",
    "expansion2",
    "compressibility",
)


def _molar_mass(value: Any) -> float:
    """kg/mol from 'g/mol' or 'kg/mol' (the only place massgate meets molar mass)."""
    text_ = text(value)
    for suffix, factor in (("kg/mol", 1.0), ("g/mol", 1e-3)):
        if text_.endswith(suffix):
            try:
                result = float(text_.removesuffix(suffix)) * factor
            except ValueError:
                break
            if 0 < result < 1.0:  # kg/mol: the heaviest gas in use is far below 1 kg/mol
                return result
    raise Invalid(f"expected a molar mass such as '16.04 g/mol', got {value!r}")


def parse_stream(s: Section) -> StreamConfig | None:
    stream_name = s.take("name", name)
    mass_flow = s.take("mass_flow", values.tag, None)
    volume_flow = s.take("volume_flow", values.tag, None)
    mass_total = s.take("mass_total", values.tag, None)
    density = parse_density(s.section("density", required=volume_flow is not None))
    accuracy = s.take("accuracy", quantity(units.FRACTION, positive=True, maximum=MAX_ACCURACY))
    max_gap = s.take("max_gap", quantity(units.TIME, positive=True, maximum=DAY), 5.0)
    dimension = units.MASS_FLOW if volume_flow is None else units.VOLUME_FLOW
    cutoff = s.take("low_flow_cutoff", quantity(dimension, minimum=0.0), 0.0)
    meter_factor = s.take("meter_factor", _meter_factor, 1.0)
    zero_stability = s.take("zero_stability", quantity(units.MASS_FLOW, positive=True), None)
    compare_entries = s.take("compare_entries", boolean, False)
    reverse = s.take("reverse", choice(*REVERSE_MODES), "separate")
    rollover = s.take("rollover", quantity(units.MASS, positive=True), None)
    max_flow = s.take("max_flow", quantity(units.MASS_FLOW, positive=True), None)
    belt_load = belt_speed = None
    if (belt := s.section("belt", required=False)) is not None:
        # A belt scale: the load on the belt (kg/m) times the belt's speed (m/s).
        belt_load = belt.take("load", values.tag)
        belt_speed = belt.take("speed", values.tag)
        belt.finish()
        if not belt.ok:
            s.ok = False
    moisture, solids = _dry_share(s)
    if mass_total is not None and (moisture or solids):
        s.fail(
            "moisture" if moisture else "solids",
            "a totalizer register is differenced, not integrated: its dry share needs a "
            "flow-rate signal (mass_flow, volume_flow or belt)",
        )
    signals = (
        ("mass_flow", mass_flow),
        ("volume_flow", volume_flow),
        ("mass_total", mass_total),
        ("belt", belt_load if belt is None else belt.path),
    )
    _exactly_one(
        s,
        signals,
        "a stream needs 'mass_flow', 'volume_flow', 'mass_total' (the tag of its meter) or "
        "'belt' (a belt scale's load and speed tags)",
    )
    if volume_flow is None and s.has("density"):
        s.fail("density", "only a volume-flow stream needs a density")
    if mass_total is None:
        for key in ("rollover", "max_flow"):
            if s.has(key):
                s.fail(key, "applies to a 'mass_total' register only")
    elif max_flow is None and s.ok:
        s.fail(
            None,
            "a 'mass_total' stream needs 'max_flow' (the most its meter can deliver, e.g. "
            "'20 kg/s'): a larger step of the register is a fault, not mass",
        )
    if mass_total is not None and s.has("low_flow_cutoff"):
        s.fail("low_flow_cutoff", "a register counts what the meter counted; no cut-off applies")
    if mass_total is not None and zero_stability is not None:
        s.fail(
            "zero_stability",
            "a zero check reads the meter's flow while the line stands still; a register has "
            "no flow to read (check the same meter's mass_flow stream instead)",
        )
    s.finish()
    if not s.ok:
        return None
    return StreamConfig(
        name=stream_name,
        mass_flow=mass_flow,
        volume_flow=volume_flow,
        mass_total=mass_total,
        density=density,
        accuracy=accuracy,
        low_flow_cutoff=cutoff,
        max_gap=max_gap,
        meter_factor=meter_factor,
        reverse=reverse,
        rollover=math.nan if rollover is None else rollover,  # nan: from the register's type
        max_flow=math.inf if max_flow is None else max_flow,
        belt_load=belt_load,
        belt_speed=belt_speed,
        moisture=moisture,
        solids=solids,
        zero_stability=zero_stability,
        compare_entries=compare_entries,
    )


def _compressibility_factor(value: Any) -> float:
    z = number(value)
    if not 0.05 <= z <= 5.0:
        raise Invalid(f"a compressibility factor Z lies between 0.05 and 5, got {z}")
    return z


def _meter_factor(value: Any) -> float:
    factor = number(value)
    if not 0.5 <= factor <= 2.0:
        raise Invalid(f"a meter factor is close to 1 (0.5 to 2), got {factor}")
    return factor


def parse_inventory(s: Section) -> InventoryConfig | None:
    inventory_name = s.take("name", name)
    level = s.take("level", values.tag, None)
    mass = s.take("mass", values.tag, None)
    count = s.take("count", values.tag_or(ENTERED, "a count entered by massgate enter"), None)
    unit_mass = s.take("unit_mass", quantity(units.MASS, positive=True), None)
    area = s.take("area", quantity(units.AREA, positive=True), None)
    strapping = _strapping(s.section("strapping", required=False))
    density = None
    if level is not None or s.has("density"):
        density = parse_density(s.section("density"))
    # By the keys given, not their values: a misspelt tag is one problem, not two.
    accuracy_unit = units.MASS if s.has("mass") or s.has("count") else units.LENGTH
    accuracy = s.take("accuracy", quantity(accuracy_unit, positive=True))
    max_age = s.take("max_age", quantity(units.TIME, positive=True, maximum=DAY), 5.0)
    _exactly_one(
        s,
        (("level", level), ("mass", mass), ("count", count)),
        "an inventory needs 'level' (a tank), 'mass' (load cells) or 'count' with "
        "'unit_mass' (work in progress)",
    )
    if (count is None) != (unit_mass is None) and s.ok:
        s.fail(
            "unit_mass" if count is None else "count",
            "work in progress is a 'count' (a counter's tag) times a 'unit_mass': give both",
        )
    if count is not None:
        for key in ("area", "strapping", "density"):
            if s.has(key):
                s.fail(key, "a count of units times their mass needs no gauge; remove this key")
    if mass is not None:
        for key in ("area", "strapping", "density"):
            if s.has(key):
                s.fail(key, "load cells give mass directly; remove this key")
    elif level is not None and s.has("area") == s.has("strapping") and s.ok:
        s.fail(None, "a tank needs 'area' (vertical, constant section) or 'strapping'")
    moisture, solids = _dry_share(s)
    s.finish()
    if not s.ok:
        return None
    return InventoryConfig(
        name=inventory_name,
        level=level,
        mass=mass,
        count=count,
        unit_mass=unit_mass,
        area=area,
        strapping=strapping,
        density=density,
        accuracy=accuracy,
        max_age=max_age,
        moisture=moisture,
        solids=solids,
    )


def _exactly_one(s: Section, keys: tuple[tuple[str, str | None], ...], missing: str) -> None:
    """One of the keys that say what is measured: `missing` when none is, which ones when
    several are."""
    given = [key for key, tag in keys if tag is not None]
    if not given and s.ok:
        s.fail(None, missing)
    if len(given) > 1:
        s.fail(given[1], f"give one of {' / '.join(given)}, not {len(given)}")


def _dry_share(s: Section) -> tuple[str | None, str | None]:
    """The tag of an analyzer's moisture, or of its solids: not both."""
    moisture = s.take("moisture", values.tag, None)
    solids = s.take("solids", values.tag, None)
    if moisture is not None and solids is not None:
        s.fail("solids", "give 'moisture' or 'solids' (its dry share), not both")
    return moisture, solids


def _strapping(s: Section | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """A gauge table: `level` and `volume` units and rows of [level, volume], ascending."""
    if s is None:
        return None
    level_unit = s.take("level_unit", _unit_of(units.LENGTH), None)
    volume_unit = s.take("volume_unit", _unit_of(units.VOLUME), None)
    rows = s.take("table", _rows, None)
    s.finish()
    if not s.ok or level_unit is None or volume_unit is None or rows is None:
        return None
    levels = tuple(level_unit.to_si(row[0]) for row in rows)
    volumes = tuple(volume_unit.to_si(row[1]) for row in rows)
    for i in range(1, len(rows)):
        if levels[i] <= levels[i - 1]:
            s.fail("table", f"row {i + 1}: levels must rise strictly ({rows[i - 1]} → {rows[i]})")
            return None
        if volumes[i] < volumes[i - 1]:
            s.fail("table", f"row {i + 1}: a volume cannot fall as the level rises")
            return None
    return levels, volumes


def _unit_of(dimension: str) -> Any:
    def convert(value: Any) -> units.Unit:
        try:
            return units.lookup(text(value), dimension=dimension)
        except units.UnitError as exc:
            raise Invalid(str(exc)) from None

    return convert


def _rows(value: Any) -> list[tuple[float, float]]:
    if not isinstance(value, list) or len(value) < 2:
        raise Invalid("expected a list of at least two [level, volume] rows")
    rows = []
    for i, row in enumerate(value):
        if not isinstance(row, list) or len(row) != 2:
            raise Invalid(f"row {i + 1}: expected [level, volume], got {row!r}")
        rows.append((number(row[0]), number(row[1])))
    return rows


def parse_manual_stream(s: Section) -> ManualStreamConfig | None:
    stream_name = s.take("name", name)
    accuracy = s.take("accuracy", quantity(units.FRACTION, positive=True, maximum=MAX_ACCURACY))
    s.take("description", text, "")
    s.finish()
    if not s.ok:
        return None
    return ManualStreamConfig(name=stream_name, accuracy=accuracy)
