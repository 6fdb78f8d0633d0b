"""The simulated plant as a YAML file: vessels, lines with their pumps, meters, faults.

The loader is the agent's own (file:line for every problem, units on every quantity), so a
plant file is checked as strictly as a gateway configuration. `plant.yaml` beside this
module is the built-in plant of `massgate demo` and `massgate sim`; README.md here documents
every key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from massgate.agent.core import units
from massgate.agent.core.yamlsource import (
    Invalid,
    Report,
    Section,
    choice,
    integer,
    load_file,
    load_text,
    name,
    number,
    quantity,
    text,
)

from .. import profiles
from .faults import Fault

OUTSIDE = "outside"  # a line's end beyond the plant: an infinite source or sink

# Where each profile's instrument sits, and what its accuracy is measured in.
METER_PLACES: dict[str, tuple[tuple[str, ...], str]] = {
    "coriolis": (("line",), units.FRACTION),
    "magmeter": (("line",), units.FRACTION),
    "level_radar": (("vessel",), units.LENGTH),
    "level_hydrostatic": (("vessel",), units.PRESSURE),
    "load_cell": (("vessel",), units.MASS),
    "temperature_tx": (("line", "vessel"), units.TEMPERATURE),
    "pressure_tx": (("line",), units.PRESSURE),
    "gas_chromatograph": (("line",), units.FRACTION),
    "belt_scale": (("line",), units.FRACTION),
    "moisture_analyzer": (("line", "vessel"), units.FRACTION),
}
NEEDS_AREA = ("level_radar", "level_hydrostatic")

# Each fault kind's magnitude key and its dimension (None: a plain number).
FAULT_MAGNITUDES: dict[str, tuple[str, str | None]] = {
    "leak": ("rate", units.MASS_FLOW),
    "bias": ("error", units.FRACTION),
    "drift": ("per_hour", units.FRACTION),
    "stuck": ("", None),
    "dropout": ("", None),
    "slow": ("delay", units.TIME),
    "exception": ("code", None),
    "crc": ("probability", units.FRACTION),
    "alarm": ("", None),
    "slip": ("slip", units.FRACTION),
    "stop": ("", None),
    "zero": ("offset", units.MASS_FLOW),
}
LINE_FAULTS = ("leak", "stop")
ZEROED = ("coriolis", "magmeter", "belt_scale")  # flow meters with a zero to shift


@dataclass(frozen=True, slots=True)
class Wave:
    """mean + amplitude·sin(2πt/period + phase): a smooth, repeatable process variable."""

    mean: float
    amplitude: float = 0.0
    period: float = 60.0
    phase: float = 0.0

    def at(self, t: float) -> float:
        if self.amplitude == 0.0:
            return self.mean
        return self.mean + self.amplitude * math.sin(2 * math.pi * t / self.period + self.phase)


@dataclass(frozen=True, slots=True)
class Fluid:
    density: float  # kg/m³ at `reference_temperature`
    reference_temperature: float  # K
    expansion: float  # 1/K

    def density_at(self, temperature: float) -> float:
        return self.density / (1.0 + self.expansion * (temperature - self.reference_temperature))


@dataclass(frozen=True, slots=True)
class VesselSpec:
    name: str
    kind: str  # tank | hopper
    mass: float | None  # kg at start (hoppers; tanks may give a level instead)
    level: float | None  # m at start (tanks)
    area: float | None  # m² (tanks)
    tare: float  # kg of the empty vessel on its load cells
    description: str
    moisture: float = 0.0  # water share of what it holds (its analyzer reads it)


@dataclass(frozen=True, slots=True)
class LineSpec:
    name: str
    source: str  # a vessel, or OUTSIDE
    to: str
    flow: Wave  # the pump's delivery: kg/s, or m³/s at line conditions
    volumetric: bool
    pressure: Wave | None  # Pa gauge, the pump's discharge
    description: str
    moisture: float = 0.0  # water share of what the line carries (its analyzer reads it)


@dataclass(frozen=True, slots=True)
class MeterSpec:
    name: str
    profile: str
    line: str | None
    vessel: str | None
    accuracy: float  # ± at 95 %: the reading's noise has σ = accuracy / 2
    description: str


@dataclass(frozen=True, slots=True)
class PlantSpec:
    seed: int
    description: str
    fluid: Fluid
    temperature: Wave
    vessels: tuple[VesselSpec, ...]
    lines: tuple[LineSpec, ...]
    meters: tuple[MeterSpec, ...]
    faults: tuple[Fault, ...]

    def vessel(self, name: str) -> VesselSpec:
        return next(v for v in self.vessels if v.name == name)

    def line(self, name: str) -> LineSpec:
        return next(v for v in self.lines if v.name == name)

    def meter(self, name: str) -> MeterSpec:
        return next(m for m in self.meters if m.name == name)


def builtin() -> PlantSpec:
    """The built-in plant (plant.yaml beside this module)."""
    resource = resources.files(__package__).joinpath("plant.yaml")
    return loads(resource.read_text(encoding="utf-8"), filename="<built-in plant.yaml>")


def load(path: Path) -> PlantSpec:
    return _build(load_file(path), str(path))


def loads(text_: str, *, filename: str) -> PlantSpec:
    return _build(load_text(text_, filename=filename), filename)


# --- converters ---------------------------------------------------------------------------


def _flow(value: Any) -> tuple[float, bool]:
    """A pump's flow: mass (kg/s, t/h) or volume (m3/h, l/min); True when volumetric."""
    for dimension, volumetric in ((units.MASS_FLOW, False), (units.VOLUME_FLOW, True)):
        try:
            return units.parse_quantity(value, dimension), volumetric
        except units.UnitError:
            continue
    raise Invalid(
        f"expected a mass flow (e.g. '2 kg/s') or a volume flow (e.g. '7 m3/h'), got {value!r}"
    )


def _swing(mean: float, dimension: str | None) -> Any:
    """A wave's swing: a fraction of the mean ('10 %') or an amount of its own ('5 K')."""

    def convert(value: Any) -> float:
        try:
            return abs(mean) * float(units.parse_quantity(value, units.FRACTION))
        except units.UnitError:
            if dimension is None:
                raise Invalid(
                    f"expected a fraction of the mean, e.g. '10 %', got {value!r}"
                ) from None
        if dimension == units.TEMPERATURE and isinstance(value, str) and "deg" in value:
            raise Invalid(f"write a temperature swing in K (a difference), not {value!r}")
        try:
            return float(units.parse_quantity(value, dimension))
        except units.UnitError:
            raise Invalid(
                f"expected a fraction of the mean (e.g. '10 %') or a {dimension}, got {value!r}"
            ) from None

    return convert


def _wave(
    owner: Section, key: str, parse: Any, dimension: str | None, *, required: bool
) -> Wave | None:
    """A constant ('2 kg/s') or {mean, swing, period, phase}; `dimension` None: swing in %."""
    if not owner.has(key):
        if required:
            owner.fail(None, f"'{key}' is required")
        return None
    raw = owner.data[key]
    if not isinstance(raw, dict):
        mean = owner.take(key, parse)
        return None if mean is None else Wave(mean)
    s = owner.section(key)
    assert s is not None
    mean = s.take("mean", parse)
    if mean is None:
        s.finish(("swing", "period", "phase"))
        return None
    amplitude = s.take("swing", _swing(mean, dimension), 0.0)
    period = s.take("period", quantity(units.TIME, positive=True), 60.0)
    phase = s.take("phase", number, 0.0)
    s.finish()
    if None in (amplitude, period, phase):
        return None
    return Wave(mean, amplitude, period, phase)


def _temperature_difference(value: Any) -> float:
    if isinstance(value, str) and "deg" in value:
        raise Invalid(f"write a temperature accuracy in K (a difference), not {value!r}")
    return quantity(units.TEMPERATURE, positive=True)(value)  # type: ignore[no-any-return]


# --- sections -----------------------------------------------------------------------------


def _build(raw: Any, filename: str) -> PlantSpec:
    report = Report(filename)
    root = Section(raw, path="", report=report, line=1)
    seed = root.take("seed", integer(0, 2**32 - 1), 1)
    description = root.take("description", text, "")
    fluid = _fluid(root.section("fluid"))
    temperature = _wave(
        root,
        "temperature",
        quantity(units.TEMPERATURE, positive=True),
        units.TEMPERATURE,
        required=True,
    )
    vessels = [v for s in root.sections("vessels") if (v := _vessel(s)) is not None]
    lines = [x for s in root.sections("lines", required=True) if (x := _line(s)) is not None]
    meter_sections = root.sections("meters", required=True)
    meters = [m for s in meter_sections if (m := _meter(s)) is not None]
    fault_sections = root.sections("faults")
    faults = [(s, f) for s in fault_sections if (f := _fault(s)) is not None]
    root.finish()
    report.raise_if_any()
    assert fluid is not None
    assert temperature is not None
    spec = PlantSpec(
        seed=seed,
        description=description,
        fluid=fluid,
        temperature=temperature,
        vessels=tuple(vessels),
        lines=tuple(lines),
        meters=tuple(meters),
        faults=tuple(f for _, f in faults),
    )
    _cross_check(spec, root, meter_sections, faults)
    report.raise_if_any()
    return spec


def _fluid(s: Section | None) -> Fluid | None:
    if s is None:
        return None
    density = s.take("density", quantity(units.DENSITY, positive=True))
    at = s.take("at", quantity(units.TEMPERATURE, positive=True))
    expansion = s.take("expansion", quantity(units.PER_KELVIN, minimum=0.0), 0.0)
    s.finish()
    if None in (density, at, expansion):
        return None
    return Fluid(density, at, expansion)


def _vessel(s: Section) -> VesselSpec | None:
    vessel_name = s.take("name", name)
    kind = s.take("kind", choice("tank", "hopper"))
    area = s.take("area", quantity(units.AREA, positive=True), None)
    level = s.take("level", quantity(units.LENGTH, minimum=0.0), None)
    mass = s.take("mass", quantity(units.MASS, minimum=0.0), None)
    tare = s.take("tare", quantity(units.MASS, minimum=0.0), 0.0)
    description = s.take("description", text, "")
    moisture = s.take("moisture", quantity(units.FRACTION, minimum=0.0, maximum=1.0), 0.0)
    s.finish()
    if not s.ok:
        return None
    if kind == "tank" and area is None:
        s.fail(None, "a tank needs its 'area' (the cross-section its level rises over)")
    if kind == "hopper" and (area is not None or level is not None):
        s.fail(
            "area" if area is not None else "level",
            "a hopper is weighed, not gauged: give its 'mass'",
        )
    if (level is None) == (mass is None):
        s.fail(None, "give the contents at start as exactly one of 'level' (tanks) or 'mass'")
    if not s.ok:
        return None
    return VesselSpec(vessel_name, kind, mass, level, area, tare, description, moisture)


def _line(s: Section) -> LineSpec | None:
    line_name = s.take("name", name)
    source = s.take("from", name)
    to = s.take("to", name)
    flow_and_basis: list[bool] = []

    def flow(value: Any) -> float:
        result, volumetric = _flow(value)
        flow_and_basis.append(volumetric)
        return result

    wave = _wave(s, "flow", flow, None, required=True)
    pressure = _wave(s, "pressure", quantity(units.PRESSURE), units.PRESSURE, required=False)
    description = s.take("description", text, "")
    moisture = s.take("moisture", quantity(units.FRACTION, minimum=0.0, maximum=1.0), 0.0)
    s.finish()
    if not s.ok or wave is None or moisture is None:
        return None
    if wave.amplitude > abs(wave.mean):
        s.fail("flow", "the swing is larger than the mean flow: the pump would run backwards")
        return None
    return LineSpec(
        line_name, source, to, wave, flow_and_basis[-1], pressure, description, moisture
    )


def _meter(s: Section) -> MeterSpec | None:
    meter_name = s.take("name", name)
    profile = s.take("profile", choice(*METER_PLACES))
    line = s.take("line", name, None)
    vessel = s.take("vessel", name, None)
    description = s.take("description", text, "")
    accuracy = None
    if profile is not None:
        dimension = METER_PLACES[profile][1]
        convert = (
            _temperature_difference
            if dimension == units.TEMPERATURE
            else quantity(dimension, positive=True)
        )
        accuracy = s.take("accuracy", convert)
    s.finish(("accuracy",))
    if not s.ok or profile is None or accuracy is None:
        return None
    places = METER_PLACES[profile][0]
    given = [k for k, v in (("line", line), ("vessel", vessel)) if v is not None]
    if len(given) != 1 or given[0] not in places:
        s.fail(
            None,
            f"a {profile} meter sits on {' or '.join('a ' + p for p in places)}: "
            f"give exactly one of {', '.join(repr(p) for p in places)}",
        )
        return None
    return MeterSpec(meter_name, profile, line, vessel, accuracy, description)


def _fault(s: Section) -> Fault | None:
    kind = s.take("kind", choice(*FAULT_MAGNITUDES))
    target = s.take("target", name)
    start = s.take("start", quantity(units.TIME, minimum=0.0), 0.0)
    end = s.take("end", quantity(units.TIME, minimum=0.0), None)
    magnitude = 0.0
    if kind is not None:
        key, dimension = FAULT_MAGNITUDES[kind]
        if kind == "exception":
            magnitude = s.take(key, integer(1, 255), 6)
        elif kind == "crc":
            magnitude = s.take(key, quantity(units.FRACTION, positive=True), 1.0)
        elif dimension is not None:
            magnitude = s.take(key, quantity(dimension))
    point = s.take("point", name) if kind == "alarm" else ""
    s.finish()
    if not s.ok or magnitude is None or point is None:
        return None
    if end is not None and end <= start:
        s.fail("end", "a fault must end after it starts")
        return None
    return Fault(
        kind=kind, target=target, start=start, end=end, magnitude=float(magnitude), point=point
    )


def _cross_check(
    spec: PlantSpec,
    root: Section,
    meter_sections: list[Section],
    faults: list[tuple[Section, Fault]],
) -> None:
    for what, items in (("vessel", spec.vessels), ("line", spec.lines), ("meter", spec.meters)):
        seen: set[str] = set()
        for item in items:
            if item.name in seen:
                root.fail(None, f"two {what}s are named '{item.name}'")
            seen.add(item.name)
    vessels = {v.name: v for v in spec.vessels}
    lines = {x.name for x in spec.lines}
    for line in spec.lines:
        for end in (line.source, line.to):
            if end != OUTSIDE and end not in vessels:
                root.fail(
                    None,
                    f"line '{line.name}' runs to or from '{end}', which is neither a vessel "
                    f"nor '{OUTSIDE}' (vessels: {', '.join(vessels) or 'none'})",
                )
        if line.source == line.to:
            root.fail(None, f"line '{line.name}' starts and ends at '{line.source}'")
    for s, meter in zip(meter_sections, spec.meters, strict=False):
        if meter.line is not None and meter.line not in lines:
            s.fail("line", f"no line is named '{meter.line}' (lines: {', '.join(sorted(lines))})")
        if meter.vessel is not None:
            vessel = vessels.get(meter.vessel)
            if vessel is None:
                s.fail("vessel", f"no vessel is named '{meter.vessel}'")
            elif meter.profile in NEEDS_AREA and vessel.kind != "tank":
                s.fail(
                    "vessel", f"a {meter.profile} meter gauges a tank; '{vessel.name}' is a hopper"
                )
    meters = {m.name for m in spec.meters}
    for s, fault in faults:
        targets, what = (lines, "line") if fault.kind in LINE_FAULTS else (meters, "meter")
        if fault.target not in targets:
            s.fail(
                "target",
                f"a {fault.kind} fault acts on a {what}; no {what} is named "
                f"'{fault.target}' ({what}s: {', '.join(sorted(targets))})",
            )
        elif fault.kind == "zero":
            profile = next(m.profile for m in spec.meters if m.name == fault.target)
            if profile not in ZEROED:
                s.fail(
                    "target",
                    f"a zero offset shifts a flow meter ({', '.join(ZEROED)}), not a {profile} "
                    "meter",
                )
        elif fault.kind == "slip":
            profile = next(m.profile for m in spec.meters if m.name == fault.target)
            if profile != "belt_scale":
                s.fail("target", f"a belt slips under a belt_scale, not a {profile} meter")
        elif fault.kind == "alarm":
            profile = next(m.profile for m in spec.meters if m.name == fault.target)
            flags = [p.name for p in profiles.load(profile).points if p.alarm is not None]
            if fault.point not in flags:
                s.fail(
                    "point",
                    f"'{fault.point}' is not an alarm flag of a {profile} meter (its flags: "
                    f"{', '.join(flags) or 'none'})",
                )
