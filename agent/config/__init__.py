"""The one YAML file, validated once into typed, frozen objects.

Nothing downstream reads raw dicts. Every problem is reported as `file:line: path: what`,
all of them in one pass, and the agent does not touch a device or a broker until the file
is clean.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from massgate.drivers import DRIVERS, PROTOCOLS, Driver
from massgate.drivers.base import Device

from ..core import preflight, units, values
from ..core.values import DAY, YEAR, Files
from ..core.yamlsource import (
    ConfigError,
    Invalid,
    Report,
    Section,
    YamlSeq,
    boolean,
    choice,
    integer,
    load_file,
    load_text,
    name,
    names,
    number,
    quantity,
    text,
)
from ..runtime.statusserver import MAX_PATH  # bytes of a Unix socket path (sun_path, less the NUL)
from ..totalize import density as density_models

STATUS_SOCKET = "status.sock"  # in the state directory, unless health.socket says otherwise

# Bounds of what the file may say, each with its reason; config.example.yaml repeats them.
# (The drivers' own bounds are in drivers/<protocol>/config.py.)
MAX_RETENTION = 10 * YEAR  # kept windows and records; more is a database's job, not a gateway's
MAX_PERIOD = 31 * DAY  # windows, persistence, reminders, ages: a month at most
MAX_OUTBOX_BYTES = 1024.0**4  # 1 TiB
MAX_DRAIN_RATE = 1e6  # messages/s, far beyond any broker link
MAX_ACCURACY = 0.5  # a meter rated worse than ±50 % is not measuring
MAX_DENSITY = 25_000.0  # kg/m³: the densest element (osmium) is 22,590
MAX_EXPANSION = 0.01  # 1/K: no liquid expands 1 % per kelvin
MAX_SIGMA = 10.0
MAX_KEEPALIVE = 65535.0  # s: MQTT's keep-alive is a 16-bit field
MAX_CLIENT_ID = 128  # characters: AWS IoT's and Azure IoT Hub's limit, the strictest in use
MAX_TOPIC_PREFIX = 128  # characters; with site and gateway names (64 each) a topic stays short

__all__ = [
    "BrokerEndpoint",
    "Config",
    "ConfigError",
    "DensityModel",
    "GatewayConfig",
    "HealthConfig",
    "InventoryConfig",
    "MqttConfig",
    "NodeConfig",
    "OutboxConfig",
    "ReconciliationConfig",
    "StreamConfig",
    "load",
    "loads",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    site: str
    id: str
    state_dir: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class DensityModel:
    """How a volume becomes a mass: one of the models of agent/totalize/density.py.

    `reference` is the nominal density (kg/m³) for tolerances and cut-offs whatever the model:
    ρ_ref of constant/linear/quadratic, the base density of API 11.1, water at 20 °C and
    1 atm, a gas at 15 °C and 1 atm.
    """

    reference: float  # kg/m³
    reference_temperature: float  # K
    expansion: float  # 1/K
    temperature: str | None  # tag
    model: str = "linear"  # constant | linear | quadratic | water | api | gas
    expansion2: float = 0.0  # 1/K², quadratic
    pressure: str | None = None  # tag, gauge pressure unless pressure_absolute
    pressure_absolute: bool = False
    atmosphere: float = 101325.0  # Pa, added to a gauge pressure where absolute is needed
    commodity: str = "crude"  # api
    base: str = "60F"  # api: 60F | 15C
    alpha60: float | None = None  # api special applications, 1/°F
    molar_mass: float = 0.0  # gas, kg/mol
    z: float | None = None  # gas: a fixed compressibility factor ...
    critical_temperature: float = 0.0  # ... or the virial model from these, K
    critical_pressure: float = 0.0  # Pa
    acentric_factor: float = 0.0
    compressibility: float = 0.0  # linear: κ in ρ = ρ_T / (1 − κ·P_gauge), 1/Pa
    standard_temperature: float = 288.15  # gas: the conditions of "standard volume", K
    standard_pressure: float = 101325.0  # Pa, absolute

    @property
    def standard_density(self) -> float:
        """kg/m³ at the conditions a standard volume is stated at.

        A liquid's reference (base) density; a gas at standard_temperature and
        standard_pressure, by the virial model when configured and ideal otherwise (a fixed Z
        belongs to the line conditions, not to standard ones).
        """
        if self.model != "gas":
            return self.reference
        if self.z is None:
            return density_models.gas_virial(
                self.standard_temperature,
                self.standard_pressure,
                molar_mass=self.molar_mass,
                critical_temperature=self.critical_temperature,
                critical_pressure=self.critical_pressure,
                acentric_factor=self.acentric_factor,
            ).value
        return density_models.gas(
            self.standard_temperature, self.standard_pressure, molar_mass=self.molar_mass, z=1.0
        ).value


REVERSE_MODES = ("separate", "ignore")
# An SD card's worth: a week of a busy gateway's records, a small share of a 16 GB card.
DEFAULT_OUTBOX_BYTES = 256 * 1024 * 1024
# Messages/s a backlog drains at: a week of a typical gateway's records in minutes, while 50
# gateways coming back together stay within what one Mosquitto absorbs.
DEFAULT_DRAIN_RATE = 1000.0


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamConfig:
    """One meter's stream. Exactly one of mass_flow, volume_flow and mass_total is set."""

    name: str
    mass_flow: str | None  # tag, kg/s
    volume_flow: str | None  # tag, m³/s
    density: DensityModel | None
    accuracy: float  # relative, stated as the meter's rated (≈2σ) accuracy
    low_flow_cutoff: float  # in SI of the flow signal
    max_gap: float  # s
    mass_total: str | None = None  # tag of the meter's own totalizer register, kg
    rollover: float = math.inf  # kg at which that register wraps to zero
    max_flow: float = math.inf  # kg/s the meter can deliver: a larger register step is a fault
    meter_factor: float = 1.0  # from the meter's proving: true = indicated × factor
    reverse: str = "separate"  # separate: own total, subtracted in balances | ignore

    @property
    def flow_tag(self) -> str:
        tag = self.mass_flow or self.volume_flow or self.mass_total
        assert tag is not None
        return tag


@dataclass(frozen=True, slots=True, kw_only=True)
class InventoryConfig:
    """Mass in a vessel: ρ · A · level, ρ · strapping(level), or load cells' mass directly."""

    name: str
    level: str | None  # tag, m
    area: float | None  # m², a vertical tank of constant cross-section ...
    density: DensityModel | None
    accuracy: float  # rated (≈2σ) accuracy: m of level, or kg on load cells
    max_age: float  # s
    strapping: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # ... or (m, m³)
    mass: str | None = None  # tag of a load-cell amplifier's net mass, kg


ROLLING, CALENDAR, BATCH = "rolling", "calendar", "batch"


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """A system boundary. Its terms are its own plus, for a node that contains nodes, theirs.

    The window is rolling (`window` s long, judged every `evaluate_every`), calendar-aligned
    (closing at `calendar` local times of `timezone` every day) or a batch (running while the
    `batch_tag` is not zero; a new value closes one batch and starts the next).
    """

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    inventories: tuple[str, ...]
    window: float  # s; rolling: its length, calendar: the longest shift, batch: NaN
    evaluate_every: float  # s
    tolerance_fixed: float  # kg
    tolerance_relative: float  # of throughput
    tolerance_sigma: float  # k in k·σ
    persistence: float  # s
    clear_after: float  # s
    min_coverage: float  # fraction
    generation: tuple[str, ...] = ()
    consumption: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()  # nodes inside this one
    window_kind: str = ROLLING
    calendar: tuple[tuple[int, int], ...] = ()  # (hour, minute) local, sorted
    timezone: str = "UTC"
    batch_tag: str | None = None
    deadband: float = 0.1  # an alarm clears below (1 − deadband) · tolerance
    re_alarm: float = 0.0  # s between reminders of an alarm still active; 0: none
    drift_k: float = 1.0  # CUSUM allowance, in σ of an interval's imbalance above baseline
    drift_h: float = 8.0  # CUSUM decision interval; 0: no drift detection


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconciliationConfig:
    window: float  # s of data each reconciliation takes
    every: float  # s
    alpha: float
    confirm: int  # evaluations in a row naming one suspect before it is an alarm


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerEndpoint:
    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttConfig:
    brokers: tuple[BrokerEndpoint, ...]
    ca_file: Path | None  # None: the system's trust store
    client_cert: Path | None
    client_key: Path | None
    protocol: str  # "5" or "3.1.1"
    keepalive: float
    topic_prefix: str
    in_flight: int
    username: str | None
    password_file: Path | None
    password_env: str | None  # name of an environment variable holding the password
    client_id: str
    status_interval: float  # s between health messages on the status topic


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxConfig:
    path: Path
    max_bytes: int
    drain_rate: float  # messages/s to the broker; 0 is no limit
    max_age: dict[str, float] = field(default_factory=dict)  # priority name -> s


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthConfig:
    socket: Path  # `massgate status` asks the running agent here
    metrics: tuple[str, int] | None = None  # Prometheus endpoint, loopback only


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    source: Path
    gateway: GatewayConfig
    devices: tuple[Device, ...]
    streams: tuple[StreamConfig, ...]
    inventories: tuple[InventoryConfig, ...]
    nodes: tuple[NodeConfig, ...]
    totals_interval: float
    hourly_retention: float  # s
    balance_retention: float = 90 * 86400.0  # s: balance and alarm records kept for reports
    reconciliation: ReconciliationConfig | None = None
    telemetry_interval: float
    outbox: OutboxConfig
    mqtt: MqttConfig | None
    health: HealthConfig


def load(path: Path) -> Config:
    """Read and validate a configuration file. Raises ConfigError listing every problem."""
    return _build(load_file(path), path)


def loads(text_: str, *, path: Path) -> Config:
    """Validate configuration text as if it were the file at `path` (tests, SIGHUP checks)."""
    return _build(load_text(text_, filename=str(path)), path)


# --- converters ---------------------------------------------------------------------------


# --- sections -----------------------------------------------------------------------------


def _build(raw: Any, path: Path) -> Config:
    report = Report(str(path))
    root = Section(raw, path="", report=report, line=1)
    base = path.resolve().parent

    def resolve(value: Any) -> Path:
        candidate = Path(text(value)).expanduser()
        return candidate if candidate.is_absolute() else base / candidate

    user = preflight.service_user(path)
    files = Files(base=base, user=user)
    gateway = _gateway(root.section("gateway"), resolve, user)
    parsers = _DeviceParsers(root, files)
    devices = tuple(parsers.device(s) for s in root.sections("devices", required=True))
    streams = tuple(_stream(s) for s in root.sections("streams"))
    inventories = tuple(_inventory(s) for s in root.sections("inventories"))
    nodes = tuple(_node(s) for s in root.sections("nodes"))

    totals_interval = 60.0
    hourly_retention = 90 * 86400.0
    if (totals := root.section("totals", required=False)) is not None:
        totals_interval = totals.take(
            "interval", quantity(units.TIME, minimum=1.0, maximum=DAY), 60.0
        )
        hourly_retention = totals.take(
            "hourly_retention",
            quantity(units.TIME, minimum=3600.0, maximum=MAX_RETENTION),
            hourly_retention,
        )
        totals.finish()
    balance_retention = 90 * 86400.0
    reconciliation = None
    if (balance := root.section("balance", required=False)) is not None:
        balance_retention = balance.take(
            "retention",
            quantity(units.TIME, minimum=3600.0, maximum=MAX_RETENTION),
            balance_retention,
        )
        if (rec := balance.section("reconciliation", required=False)) is not None:
            reconciliation = _reconciliation(rec)
        balance.finish()
    telemetry_interval = 10.0
    if (telemetry := root.section("telemetry", required=False)) is not None:
        telemetry_interval = telemetry.take(
            "interval", quantity(units.TIME, minimum=0.0, maximum=DAY), 10.0
        )
        telemetry.finish()

    state_dir = gateway.state_dir if gateway is not None else base
    outbox = OutboxConfig(
        path=state_dir / "state.sqlite",
        max_bytes=DEFAULT_OUTBOX_BYTES,
        drain_rate=DEFAULT_DRAIN_RATE,
    )
    if (outbox_section := root.section("outbox", required=False)) is not None:
        outbox = _outbox(outbox_section, state_dir, resolve, user)

    health = HealthConfig(socket=state_dir / STATUS_SOCKET)
    if (health_section := root.section("health", required=False)) is not None:
        health = HealthConfig(
            socket=health_section.take("socket", resolve, health.socket),
            metrics=health_section.take("metrics", _loopback_address, None),
        )
        if health_section.has("socket"):
            _check_socket(health_section, health.socket, user)
        health_section.finish()
    elif gateway is not None and len(os.fsencode(health.socket)) > MAX_PATH:
        root.fail(
            "gateway",
            f"the status socket {health.socket} would be longer than {MAX_PATH} bytes; "
            "use a shorter state_dir or set health.socket",
        )

    mqtt = None
    if (mqtt_section := root.section("mqtt", required=False)) is not None:
        default_id = f"massgate-{gateway.site}-{gateway.id}" if gateway else "massgate"
        mqtt = _mqtt(mqtt_section, resolve, default_id, user)
    # Top-level keys starting with "x-" hold YAML anchors for `<<: *name` (a template for
    # twenty similar meters); like docker-compose's extension fields, they are not read.
    root.finish(extra_known=[key for key in root.data if key.startswith("x-")])
    report.raise_if_any()

    config = Config(
        source=path,
        gateway=gateway,  # type: ignore[arg-type]  # checked by raise_if_any
        devices=devices,
        streams=streams,  # type: ignore[arg-type]
        inventories=inventories,  # type: ignore[arg-type]
        nodes=nodes,  # type: ignore[arg-type]
        totals_interval=totals_interval,
        hourly_retention=hourly_retention,
        balance_retention=balance_retention,
        reconciliation=reconciliation,
        telemetry_interval=telemetry_interval,
        outbox=outbox,
        mqtt=mqtt,
        health=health,
    )
    _cross_check(config, root, report, parsers)
    report.raise_if_any()
    return replace(
        config, streams=tuple(_with_rollover(stream, config) for stream in config.streams)
    )


def _with_rollover(stream: StreamConfig, config: Config) -> StreamConfig:
    """A total's rollover, unless given: where its point wraps (an integer register at
    2^bits counts; a float is taken not to wrap)."""
    if stream.mass_total is None or not math.isnan(stream.rollover):
        return stream
    span = next(
        (p.rollover for d in config.devices for p in d.points if p.tag == stream.mass_total),
        math.inf,
    )
    return replace(stream, rollover=span)


class _DeviceParsers:
    """Each driver's parser (drivers/__init__.py), made when the file names its protocol or
    a section it owns: the agent parses no protocol's keys itself."""

    def __init__(self, root: Section, files: Files) -> None:
        self.root, self.files = root, files
        self.parsers: dict[str, Any] = {}
        for driver in DRIVERS:
            if any(root.has(key) for key in driver.sections):
                self._parser(driver)

    def _parser(self, driver: Driver) -> Any:
        if driver.package not in self.parsers:
            self.parsers[driver.package] = driver.config().Parser(self.root, self.files)
        return self.parsers[driver.package]

    def device(self, s: Section) -> Any:
        device_name = s.take("name", name)
        protocol = s.take("protocol", choice(*PROTOCOLS))
        # An unknown protocol is read as the first driver's, so that its keys are not all
        # reported as unknown too.
        driver = PROTOCOLS.get(protocol, DRIVERS[0])
        return self._parser(driver).device(s, device_name, protocol)

    def cross_check(self, devices: tuple[Device, ...], where: Any, report: Report) -> None:
        for package, parser in self.parsers.items():
            mine = [(i, d) for i, d in enumerate(devices) if d.driver == package]
            parser.cross_check(mine, where, report)


def _gateway(s: Section | None, resolve: Any, user: Any) -> GatewayConfig | None:
    if s is None:
        return None
    result = GatewayConfig(
        site=s.take("site", name),
        id=s.take("id", name),
        state_dir=s.take("state_dir", resolve),
    )
    if result.state_dir is not None:
        try:
            preflight.writable_dir(result.state_dir, user=user)
        except preflight.PreflightError as exc:
            s.fail("state_dir", str(exc))
    s.finish()
    return result if s.ok else None


def _check_socket(s: Section, socket: Path, user: Any) -> None:
    if len(os.fsencode(socket)) > MAX_PATH:
        s.fail("socket", f"{socket} is longer than {MAX_PATH} bytes (a Unix socket path)")
        return
    try:
        preflight.writable_dir(socket.parent, user=user)
    except preflight.PreflightError as exc:
        s.fail("socket", str(exc))


DENSITY_MODELS = ("constant", "linear", "quadratic", "water", "api", "gas")
API_COMMODITIES = (
    "crude",
    "refined",
    "gasoline",
    "transition",
    "jet",
    "fuel_oil",
    "lube",
    "special",
)


def _density(s: Section | None) -> DensityModel | None:
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
    else:  # gas
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
        if (standard := s.section("standard", required=False)) is not None:
            common["standard_temperature"] = standard.take("temperature", _temperature, 288.15)
            common["standard_pressure"] = standard.take(
                "pressure", quantity(units.PRESSURE, minimum=1e3, maximum=1e7), 101325.0
            )
            standard.finish()
        common["reference_temperature"] = 288.15
        common["expansion"] = 0.0
        if common["molar_mass"] is not None:
            common["reference"] = density_models.gas(
                288.15, 101325.0, molar_mass=common["molar_mass"], z=1.0
            ).value
    s.finish()
    if not s.ok or any(v is None for k, v in common.items() if k in _REQUIRED_DENSITY_KEYS):
        return None
    return DensityModel(**common)


_density_quantity = quantity(units.DENSITY, positive=True, maximum=MAX_DENSITY)
# Kelvin: from what cryogenic service needs to what no liquid or gas meter sees.
_temperature = quantity(units.TEMPERATURE, minimum=1.0, maximum=2000.0)


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


def _stream(s: Section) -> StreamConfig | None:
    stream_name = s.take("name", name)
    mass_flow = s.take("mass_flow", values.tag, None)
    volume_flow = s.take("volume_flow", values.tag, None)
    mass_total = s.take("mass_total", values.tag, None)
    density = _density(s.section("density", required=volume_flow is not None))
    accuracy = s.take("accuracy", quantity(units.FRACTION, positive=True, maximum=MAX_ACCURACY))
    max_gap = s.take("max_gap", quantity(units.TIME, positive=True, maximum=DAY), 5.0)
    dimension = units.MASS_FLOW if volume_flow is None else units.VOLUME_FLOW
    cutoff = s.take("low_flow_cutoff", quantity(dimension, minimum=0.0), 0.0)
    meter_factor = s.take("meter_factor", _meter_factor, 1.0)
    reverse = s.take("reverse", choice(*REVERSE_MODES), "separate")
    rollover = s.take("rollover", quantity(units.MASS, positive=True), None)
    max_flow = s.take("max_flow", quantity(units.MASS_FLOW, positive=True), None)
    signals = (("mass_flow", mass_flow), ("volume_flow", volume_flow), ("mass_total", mass_total))
    given = [key for key, tag in signals if tag is not None]
    if not given and s.ok:
        s.fail(
            None,
            "a stream needs 'mass_flow', 'volume_flow' or 'mass_total' (the tag of its meter)",
        )
    if len(given) > 1:
        s.fail(given[1], f"give one of {' / '.join(given)}, not {len(given)}")
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


def _inventory(s: Section) -> InventoryConfig | None:
    inventory_name = s.take("name", name)
    level = s.take("level", values.tag, None)
    mass = s.take("mass", values.tag, None)
    area = s.take("area", quantity(units.AREA, positive=True), None)
    strapping = _strapping(s.section("strapping", required=False))
    density = None
    if level is not None or s.has("density"):
        density = _density(s.section("density"))
    accuracy_unit = units.MASS if mass is not None else units.LENGTH
    accuracy = s.take("accuracy", quantity(accuracy_unit, positive=True))
    max_age = s.take("max_age", quantity(units.TIME, positive=True, maximum=DAY), 5.0)
    if level is None and mass is None and s.ok:
        s.fail(None, "an inventory needs 'level' (a tank) or 'mass' (load cells)")
    if level is not None and mass is not None:
        s.fail("mass", "give either 'level' or 'mass', not both")
    if mass is not None:
        for key in ("area", "strapping", "density"):
            if s.has(key):
                s.fail(key, "load cells give mass directly; remove this key")
    elif level is not None and s.has("area") == s.has("strapping") and s.ok:
        s.fail(None, "a tank needs 'area' (vertical, constant section) or 'strapping'")
    s.finish()
    if not s.ok:
        return None
    return InventoryConfig(
        name=inventory_name,
        level=level,
        mass=mass,
        area=area,
        strapping=strapping,
        density=density,
        accuracy=accuracy,
        max_age=max_age,
    )


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


def _node(s: Section) -> NodeConfig | None:
    node_name = s.take("name", name)
    inputs = s.take("inputs", names, ())
    outputs = s.take("outputs", names, ())
    inventories = s.take("inventories", names, ())
    generation = s.take("generation", names, ())
    consumption = s.take("consumption", names, ())
    children = s.take("nodes", names, ())
    window: dict[str, Any] = {}
    if isinstance(s.data.get("window"), dict):
        if (ws := s.section("window")) is not None:
            window = _calendar_or_batch(ws)
    else:
        window = {"window": s.take("window", quantity(units.TIME, minimum=1.0, maximum=MAX_PERIOD))}
    evaluate_every = s.take("evaluate_every", quantity(units.TIME, minimum=0.1, maximum=DAY), None)
    fixed, relative, sigma = 0.0, 0.01, 3.0
    if (tol := s.section("tolerance", required=False)) is not None:
        fixed = tol.take("fixed", quantity(units.MASS, minimum=0.0), 0.0)
        relative = tol.take("relative", quantity(units.FRACTION, minimum=0.0, maximum=1.0), 0.0)
        sigma = tol.take("sigma", _sigma, 3.0)
        tol.finish()
    period = quantity(units.TIME, minimum=0.0, maximum=MAX_PERIOD)
    persistence = s.take("persistence", period)
    clear_after = s.take("clear_after", period, 0.0)
    fraction = quantity(units.FRACTION, minimum=0.0, maximum=1.0)
    min_coverage = s.take("min_coverage", fraction, 0.9)
    deadband = s.take("deadband", fraction, 0.1)
    re_alarm = s.take("re_alarm", period, 0.0)
    drift_k, drift_h = 1.0, 8.0
    if s.data.get("drift") is False:
        s.take("drift", boolean)
        drift_h = 0.0
    elif (drift := s.section("drift", required=False)) is not None:
        drift_k = drift.take("k", quantity(units.FRACTION, minimum=0.0, maximum=100.0), drift_k)
        drift_h = drift.take("h", quantity(units.FRACTION, positive=True, maximum=1000.0), drift_h)
        drift.finish()
    s.finish()
    if not s.ok or not window:
        return None
    if not (inputs or outputs or inventories or generation or consumption or children):
        s.fail(
            None,
            "a node needs at least one of 'inputs', 'outputs', 'inventories', 'generation', "
            "'consumption', 'nodes'",
        )
        return None
    if deadband >= 1:
        s.fail("deadband", "must be below 100 % of the tolerance")
        return None
    kind = window.get("window_kind", ROLLING)
    length = window.get("window", math.nan)
    if evaluate_every is None:
        evaluate_every = min(length / 10, 60.0) if kind == ROLLING else 60.0
    if kind == ROLLING and evaluate_every > length:
        s.fail("evaluate_every", "must not be longer than the window")
        return None
    return NodeConfig(
        name=node_name,
        inputs=inputs,
        outputs=outputs,
        inventories=inventories,
        generation=generation,
        consumption=consumption,
        nodes=children,
        evaluate_every=evaluate_every,
        tolerance_fixed=fixed,
        tolerance_relative=relative,
        tolerance_sigma=sigma,
        persistence=persistence,
        clear_after=clear_after,
        min_coverage=min_coverage,
        deadband=deadband,
        re_alarm=re_alarm,
        drift_k=drift_k,
        drift_h=drift_h,
        **window,
    )


def _sigma(value: Any) -> float:
    sigma = number(value)
    if not 0 <= sigma <= MAX_SIGMA:
        raise Invalid(
            f"sigma is a coverage factor from 0 to {MAX_SIGMA:g} (3 is usual), got {sigma}"
        )
    return sigma


def _clock_time(value: Any) -> tuple[int, int]:
    raw = text(value) if not isinstance(value, int) else f"{value // 60:02d}:{value % 60:02d}"
    # YAML 1.1 reads an unquoted 06:00 as the sexagesimal number 360: both are accepted.
    parts = raw.split(":")
    try:
        hour, minute = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise Invalid(f"'{raw}' is not a time of day like 06:00") from None
    if len(parts) > 2 or not (0 <= hour < 24 and 0 <= minute < 60):
        raise Invalid(f"'{raw}' is not a time of day like 06:00")
    return hour, minute


def _calendar_or_batch(s: Section) -> dict[str, Any]:
    if s.has("batch") == s.has("calendar"):
        s.fail(None, "give 'calendar: [06:00, 14:00, 22:00]' (with 'timezone') or 'batch: TAG'")
        s.finish(("batch", "calendar", "timezone"))
        return {}
    if s.has("batch"):
        tag = s.take("batch", values.tag)
        s.finish()
        return {"window_kind": BATCH, "batch_tag": tag, "window": math.nan} if s.ok else {}
    times = s.take("calendar", _clock_times)
    zone = s.take("timezone", _timezone, "UTC")
    s.finish()
    if not s.ok:
        return {}
    minutes = [h * 60 + m for h, m in times]
    gaps = [
        (b - a) % 1440 or 1440 for a, b in zip(minutes, [*minutes[1:], minutes[0]], strict=True)
    ]
    return {
        "window_kind": CALENDAR,
        "calendar": tuple(times),
        "timezone": zone,
        "window": max(gaps) * 60.0,
    }


def _clock_times(value: Any) -> tuple[tuple[int, int], ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise Invalid("expected at least one time of day")
    times = sorted({_clock_time(v) for v in items})
    if len(times) != len(items):
        raise Invalid("a time of day is given twice")
    return tuple(times)


def _timezone(value: Any) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # noqa: PLC0415

    zone = text(value)
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise Invalid(f"'{zone}' is not a time zone like Europe/Berlin or UTC") from None
    return zone


def _reconciliation(s: Section) -> ReconciliationConfig:
    window = s.take("window", quantity(units.TIME, minimum=60.0, maximum=MAX_PERIOD), 3600.0)
    every = s.take("every", quantity(units.TIME, minimum=1.0, maximum=DAY), 300.0)
    alpha = s.take("alpha", quantity(units.FRACTION, positive=True), 0.05)
    confirm = s.take("confirm", integer(1, 1000), 3)
    s.finish()
    if alpha is not None and alpha >= 0.5:
        s.fail("alpha", "a significance level is small, like 0.05")
    return ReconciliationConfig(window=window, every=every, alpha=alpha, confirm=confirm)


def _outbox(s: Section, state_dir: Path, resolve: Any, user: Any) -> OutboxConfig:
    path = s.take("path", resolve, state_dir / "state.sqlite")
    if s.has("path") and path is not None:
        try:
            if os.path.isdir(path):
                raise preflight.PreflightError(f"{path} is a directory; name the database file")
            preflight.writable_dir(path.parent, user=user)
        except preflight.PreflightError as exc:
            s.fail("path", str(exc))
    max_bytes = s.take(
        "max_size",
        quantity(units.BYTES, minimum=1e5, maximum=MAX_OUTBOX_BYTES),
        DEFAULT_OUTBOX_BYTES,
    )
    drain_rate = s.take("drain_rate", number, DEFAULT_DRAIN_RATE)
    if drain_rate is not None and not 0 <= drain_rate <= MAX_DRAIN_RATE:
        s.fail(
            "drain_rate",
            f"a rate in messages per second up to {MAX_DRAIN_RATE:g}, or 0 for no limit",
        )
    max_age: dict[str, float] = {}
    if (ages := s.section("max_age", required=False)) is not None:
        for priority in ("telemetry", "totals", "balance", "alarm"):
            age = ages.take(
                priority, quantity(units.TIME, positive=True, maximum=MAX_RETENTION), None
            )
            if age is not None:
                max_age[priority] = age
        ages.finish()
        if not ages.ok:
            s.ok = False
    s.finish()
    return OutboxConfig(
        path=path, max_bytes=int(max_bytes or 0), drain_rate=drain_rate or 0.0, max_age=max_age
    )


def _loopback_address(value: Any) -> tuple[str, int]:
    """host:port of the metrics endpoint; only a loopback address (it has no authentication)."""
    host, sep, port_text = text(value).rpartition(":")
    host = host.strip("[]")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise Invalid(f"expected host:port such as 127.0.0.1:9108, got {value!r}")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise Invalid(
            f"{host} is not a loopback address: the metrics endpoint has no authentication, "
            "so it listens on 127.0.0.1 or ::1 only (put a reverse proxy with TLS in front "
            "to reach it from elsewhere)"
        )
    return host, int(port_text)


def _broker(value: Any) -> BrokerEndpoint:
    url = urlsplit(text(value))
    if url.scheme not in ("mqtts", "mqtt") or not url.hostname:
        raise Invalid(f"'{value}' is not a broker URL like mqtts://broker.example.com:8883")
    try:
        port = url.port
    except ValueError:
        raise Invalid(f"'{value}' has an invalid port") from None
    if port == 0:
        raise Invalid(f"'{value}' has an invalid port (1-65535)")
    host = values.host(url.hostname)
    tls = url.scheme == "mqtts"
    return BrokerEndpoint(host=host, port=port or (8883 if tls else 1883), tls=tls)


def _topic_prefix(value: Any) -> str:
    prefix = text(value)
    if len(prefix) > MAX_TOPIC_PREFIX:
        raise Invalid(f"a topic prefix is at most {MAX_TOPIC_PREFIX} characters")
    if any(c in prefix for c in "+#\x00") or prefix.startswith("/") or prefix.endswith("/"):
        raise Invalid(
            f"'{prefix}' is not a topic prefix: no '+', '#' (wildcards), and no '/' at either end"
        )
    if "//" in prefix:
        raise Invalid(f"'{prefix}' has an empty topic level ('//')")
    return prefix


def _client_id(value: Any) -> str:
    client_id = text(value)
    if len(client_id) > MAX_CLIENT_ID:
        raise Invalid(
            f"a client id is at most {MAX_CLIENT_ID} characters; this one has {len(client_id)}"
        )
    if not client_id.isascii() or not client_id.isprintable() or " " in client_id:
        raise Invalid(f"'{client_id}' may contain only printable ASCII without spaces")
    return client_id


def _env_name(value: Any) -> str:
    result = text(value)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", result):
        raise Invalid(f"'{result}' is not the name of an environment variable")
    return result


def _mqtt(s: Section, resolve: Any, default_client_id: str, user: Any) -> MqttConfig:
    brokers: tuple[BrokerEndpoint, ...] = ()
    raw_brokers = s.take("brokers", lambda v: v)
    if isinstance(raw_brokers, YamlSeq) and raw_brokers:
        collected = []
        for i, item in enumerate(raw_brokers):
            try:
                collected.append(_broker(item))
            except Invalid as exc:
                s.report.add(raw_brokers.item_lines[i], f"{s.child_path('brokers')}[{i}]", str(exc))
                s.ok = False
        brokers = tuple(collected)
    elif raw_brokers is not None:
        s.fail("brokers", "expected a list of broker URLs, e.g. [mqtts://broker:8883]")
    allow_plaintext = s.take("allow_plaintext", boolean, False)
    if any(not b.tls for b in brokers) and not allow_plaintext:
        s.fail(
            "brokers",
            "an mqtt:// (plaintext) broker sends readings unencrypted; use mqtts:// "
            "or set 'allow_plaintext: true' if you really mean it",
        )
    result = MqttConfig(
        brokers=brokers,
        ca_file=s.take("ca_file", resolve, None),
        client_cert=s.take("client_cert", resolve, None),
        client_key=s.take("client_key", resolve, None),
        protocol=s.take("protocol", choice("5", "3.1.1"), "5"),
        keepalive=s.take(
            "keepalive", quantity(units.TIME, minimum=5.0, maximum=MAX_KEEPALIVE), 30.0
        ),
        topic_prefix=s.take("topic_prefix", _topic_prefix, "massgate"),
        in_flight=s.take("in_flight", integer(1, 65535), 20),
        username=s.take("username", text, None),
        password_file=s.take("password_file", resolve, None),
        password_env=s.take("password_env", _env_name, None),
        client_id=s.take("client_id", _client_id, default_client_id),
        status_interval=s.take(
            "status_interval", quantity(units.TIME, minimum=1.0, maximum=DAY), 60.0
        ),
    )
    if not s.has("client_id") and len(default_client_id) > MAX_CLIENT_ID:
        s.fail(
            None,
            f"the client id made from site and gateway id ({len(default_client_id)} characters) "
            f"is longer than {MAX_CLIENT_ID}; set 'client_id'",
        )
    if any(b.tls for b in result.brokers) or result.client_cert or result.client_key:
        for key, message in preflight.tls_problems(
            ca_file=result.ca_file,
            client_cert=result.client_cert,
            client_key=result.client_key,
            user=user,
        ):
            s.fail(key, message)
    if result.password_file is not None:
        try:
            preflight.password_file(result.password_file, user=user)
        except preflight.PreflightError as exc:
            s.fail("password_file", str(exc))
    if (result.client_cert is None) != (result.client_key is None):
        s.fail("client_cert", "give both 'client_cert' and 'client_key', or neither")
    if result.password_file is not None and result.password_env is not None:
        s.fail("password_env", "give the password by 'password_file' or 'password_env', not both")
    if (result.password_file or result.password_env) and result.username is None:
        s.fail("username", "a password needs a 'username'")
    s.finish()
    return result


# --- cross-object checks ------------------------------------------------------------------


def _cross_check(config: Config, root: Section, report: Report, parsers: _DeviceParsers) -> None:
    def where(section: str, index: int, key: str | None = None) -> tuple[int, str]:
        items = root.data.get(section)
        entry = items[index] if items is not None else None
        path = f"{section}[{index}]"
        line = items.item_lines[index] if items is not None else 1
        if key is not None and entry is not None and key in entry.key_lines:
            return entry.key_lines[key], f"{path}.{key}"
        return line, path

    def unique(section: str, items: tuple[Any, ...]) -> None:
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            if item.name in seen:
                report.add(
                    *where(section, i, "name"),
                    f"'{item.name}' is already used by {section}[{seen[item.name]}]",
                )
            seen.setdefault(item.name, i)

    unique("devices", config.devices)
    unique("streams", config.streams)
    unique("inventories", config.inventories)
    unique("nodes", config.nodes)

    tags = {point.tag: point.unit for device in config.devices for point in device.points}
    parsers.cross_check(config.devices, where, report)

    def check_tag(section: str, index: int, key: str, tag: str | None, dimension: str) -> None:
        if tag is None:
            return
        if tag not in tags:
            close = difflib.get_close_matches(tag, list(tags), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            report.add(*where(section, index, key), f"no device point '{tag}'.{hint}")
            return
        unit = units.lookup(tags[tag])
        if unit.dimension != dimension:
            report.add(
                *where(section, index, key),
                f"'{tag}' is in {tags[tag]} ({unit.dimension}), but a {dimension} is needed here",
            )

    for i, stream in enumerate(config.streams):
        check_tag("streams", i, "mass_flow", stream.mass_flow, units.MASS_FLOW)
        check_tag("streams", i, "volume_flow", stream.volume_flow, units.VOLUME_FLOW)
        check_tag("streams", i, "mass_total", stream.mass_total, units.MASS)
        if stream.density is not None:
            check_tag("streams", i, "density", stream.density.temperature, units.TEMPERATURE)
            check_tag("streams", i, "density", stream.density.pressure, units.PRESSURE)
    for i, inventory in enumerate(config.inventories):
        check_tag("inventories", i, "level", inventory.level, units.LENGTH)
        check_tag("inventories", i, "mass", inventory.mass, units.MASS)
        if inventory.density is not None:
            density = inventory.density
            check_tag("inventories", i, "density", density.temperature, units.TEMPERATURE)
            check_tag("inventories", i, "density", density.pressure, units.PRESSURE)

    stream_names = {s.name for s in config.streams}
    inventory_names = {v.name for v in config.inventories}
    node_names = {n.name for n in config.nodes}
    for i, node in enumerate(config.nodes):
        for key, wanted, known in (
            ("inputs", node.inputs, stream_names),
            ("outputs", node.outputs, stream_names),
            ("generation", node.generation, stream_names),
            ("consumption", node.consumption, stream_names),
            ("inventories", node.inventories, inventory_names),
            ("nodes", node.nodes, node_names),
        ):
            for item in wanted:
                if item not in known:
                    kind = {"inventories": "inventory", "nodes": "node"}.get(key, "stream")
                    report.add(*where("nodes", i, key), f"no {kind} named '{item}'")
        roles = [*node.inputs, *node.outputs, *node.generation, *node.consumption]
        twice = sorted({r for r in roles if roles.count(r) > 1})
        if twice:
            report.add(
                *where("nodes", i, "outputs"),
                f"{twice} can be only one of input, output, generation, consumption of a node",
            )
        if not math.isfinite(node.tolerance_sigma) or node.tolerance_sigma < 0:
            report.add(*where("nodes", i, "tolerance"), "sigma must be a number ≥ 0")
        if node.batch_tag is not None and node.batch_tag not in tags:
            close = difflib.get_close_matches(node.batch_tag, list(tags), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            report.add(*where("nodes", i, "window"), f"no device point '{node.batch_tag}'.{hint}")
    if report.problems:
        return
    try:
        terms = node_terms(config.nodes)
    except NodeCycle as exc:
        index = next(i for i, n in enumerate(config.nodes) if n.name == exc.node)
        report.add(*where("nodes", index, "nodes"), str(exc))
        return
    if config.reconciliation is not None:
        leaves = [n for n in config.nodes if not n.nodes]
        from ..balance.reconcile import network_of  # noqa: PLC0415

        try:
            network_of(
                [n.name for n in leaves],
                {n.name: terms[n.name].inputs for n in leaves},
                {n.name: terms[n.name].outputs for n in leaves},
            )
        except ValueError as exc:
            line = root.data.key_lines.get("balance", 1)
            report.add(line, "balance.reconciliation", f"the nodes do not form a network: {exc}")


class NodeCycle(ValueError):
    """Nodes that contain each other; `node` is where the cycle was entered."""

    def __init__(self, message: str, node: str) -> None:
        super().__init__(message)
        self.node = node


@dataclass(frozen=True, slots=True)
class NodeTerms:
    """What crosses a node's boundary once the nodes inside it are counted."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    generation: tuple[str, ...]
    consumption: tuple[str, ...]
    inventories: tuple[str, ...]


def node_terms(nodes: tuple[NodeConfig, ...]) -> dict[str, NodeTerms]:
    """Each node's terms; a stream from one inner node to another is internal to the outer one.

    Raises ValueError when a node contains itself, directly or through others.
    """
    by_name = {n.name: n for n in nodes}
    found: dict[str, NodeTerms] = {}

    def resolve(node: NodeConfig, path: tuple[str, ...]) -> NodeTerms:
        if node.name in path:
            cycle = " → ".join((*path[path.index(node.name) :], node.name))
            # Reported at the node whose 'nodes' entry closes the circle.
            raise NodeCycle(f"nodes contain each other: {cycle}", path[-1])
        if node.name in found:
            return found[node.name]
        parts = [resolve(by_name[c], (*path, node.name)) for c in node.nodes]
        own = NodeTerms(
            node.inputs, node.outputs, node.generation, node.consumption, node.inventories
        )
        ins = _union(own.inputs, *(p.inputs for p in parts))
        outs = _union(own.outputs, *(p.outputs for p in parts))
        internal = set(ins) & set(outs)
        result = NodeTerms(
            tuple(x for x in ins if x not in internal),
            tuple(x for x in outs if x not in internal),
            _union(own.generation, *(p.generation for p in parts)),
            _union(own.consumption, *(p.consumption for p in parts)),
            _union(own.inventories, *(p.inventories for p in parts)),
        )
        found[node.name] = result
        return result

    for node in nodes:
        resolve(node, ())
    return found


def _union(*groups: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(x for g in groups for x in g))
