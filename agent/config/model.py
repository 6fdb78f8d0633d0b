"""The typed configuration: frozen objects made once by load(), and the bounds of what the
file may say, each with its reason (config.example.yaml repeats them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from massgate.drivers.base import Device

from ..core.values import DAY, YEAR
from ..totalize import density as density_models
from ..totalize.gas import Composition

STATUS_SOCKET = "status.sock"  # in the state directory, unless health.socket says otherwise
COMMAND_SOCKET = "command.sock"  # beside the status socket: massgate batch
# What an operator may command the running agent to do (the command socket; from the broker
# only those named in mqtt.commands). None of them reaches a device.
COMMANDS = ("batch", "enter")

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
    composition: Composition | None = None  # gas by composition, through `equation`:
    equation: str = ""  # gerg2008 | detail | virial | ideal (agent/totalize/gas.py)
    composition_device: str | None = None  # ... or live from a gas chromatograph

    @property
    def standard_density(self) -> float:
        """kg/m³ at the conditions a standard volume is stated at.

        A liquid's reference (base) density; a gas at standard_temperature and
        standard_pressure: by its equation when it has a composition (the base Z from the same
        equation as the line's), by the virial model when configured, and ideal otherwise (a
        fixed Z belongs to the line conditions, not to standard ones).
        """
        if self.model != "gas":
            return self.reference
        if self.composition_device is not None:
            return math.nan  # the analyzer's composition decides: standard_density_of
        if self.composition is not None:
            return self.standard_density_of(self.composition)
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

    def standard_density_of(self, composition: Composition) -> float:
        """A gas of this composition at the standard conditions, by this model's equation."""
        from ..totalize.gas import gas  # noqa: PLC0415

        found = gas(self.equation, composition)
        return found.state(self.standard_temperature, self.standard_pressure).density


REVERSE_MODES = ("separate", "ignore")
# An SD card's worth: a week of a busy gateway's records, a small share of a 16 GB card.
DEFAULT_OUTBOX_BYTES = 256 * 1024 * 1024
# Messages/s a backlog drains at: a week of a typical gateway's records in minutes, while 50
# gateways coming back together stay within what one Mosquitto absorbs.
DEFAULT_DRAIN_RATE = 1000.0


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamConfig:
    """One meter's stream. Exactly one of mass_flow, volume_flow, mass_total and belt_load (with
    belt_speed) is set."""

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
    belt_load: str | None = None  # a belt scale: tag of the load on the belt, kg/m ...
    belt_speed: str | None = None  # ... and of the belt's speed, m/s: mass flow = load × speed
    # An analyzer's water share of the wet mass (moisture) or its dry share (solids): the
    # stream's dry kilograms are integrated beside its wet ones.
    moisture: str | None = None
    solids: str | None = None
    # kg/s a still meter may read (its rated zero stability): more on a stopped line is a
    # zero drift (a node's zero_check)
    zero_stability: float | None = None
    # Keep 12 h of the running total, to compare entries of the same deliveries with it
    # (a weighbridge's tickets against the flow meter): massgate enter --from --to.
    compare_entries: bool = False

    @property
    def dry_tag(self) -> str | None:
        return self.moisture or self.solids

    @property
    def flow_tag(self) -> str:
        tag = self.mass_flow or self.volume_flow or self.mass_total or self.belt_load
        assert tag is not None
        return tag


@dataclass(frozen=True, slots=True, kw_only=True)
class ManualStreamConfig:
    """A stream no meter reads: weighbridge tickets, dip readings, MES issues and receipts,
    entered with `massgate enter`. Each entry lands in the window of the time it gives."""

    name: str
    accuracy: float  # an entry's default uncertainty, relative (read as 2σ, like a meter's)


@dataclass(frozen=True, slots=True, kw_only=True)
class InventoryConfig:
    """Mass in a vessel: ρ · A · level, ρ · strapping(level), or load cells' mass directly;
    or work in progress: a count of units × the mass of one."""

    name: str
    level: str | None  # tag, m
    area: float | None  # m², a vertical tank of constant cross-section ...
    density: DensityModel | None
    accuracy: float  # rated (≈2σ) accuracy: m of level, or kg on load cells
    max_age: float  # s
    strapping: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # ... or (m, m³)
    mass: str | None = None  # tag of a load-cell amplifier's net mass, kg
    # Work in progress counted, not weighed: pieces, pallets, bags × the mass of one
    # (accuracy is then one unit's ±, kg, and units vary independently).
    count: str | None = None  # a counter's tag, or ENTERED: a stocktake by massgate enter
    unit_mass: float | None = None  # kg
    moisture: str | None = None  # an analyzer's water share of what the vessel holds ...
    solids: str | None = None  # ... or its dry share: its dry kilograms for a dry balance

    @property
    def dry_tag(self) -> str | None:
        return self.moisture or self.solids


ROLLING, CALENDAR, BATCH = "rolling", "calendar", "batch"
ENTERED = "entry"  # an inventory's count: entered by hand (a stocktake), not read from a tag

# What a node's output is: yield counts product; scrap, waste and emission are losses we know
# of; byproduct, rework and hold leave the node but are neither yield nor loss (hold: not yet
# decided). The unaccounted loss is the imbalance.
PRODUCT = "product"
LOSS_CLASSES = ("scrap", "waste", "emission")
OUTPUT_CLASSES = (PRODUCT, "byproduct", "rework", *LOSS_CLASSES, "hold")


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
    campaign_tag: str | None = None  # a batch's campaign (a PLC's campaign or order number)
    deadband: float = 0.1  # an alarm clears below (1 − deadband) · tolerance
    re_alarm: float = 0.0  # s between reminders of an alarm still active; 0: none
    drift_k: float = 1.0  # CUSUM allowance, in σ of an interval's imbalance above baseline
    drift_h: float = 8.0  # CUSUM decision interval; 0: no drift detection
    basis: str = "wet"  # wet | dry: kilograms as metered, or their dry share (a dryer's solids)
    output_classes: tuple[tuple[str, str], ...] = ()  # (output, class) where not product
    theoretical_yield: float | None = None  # the recipe's product per kg of input
    zero_check: ZeroCheckConfig | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ZeroCheckConfig:
    """When the node's line stands still (its `running` tag reads 0, or without one every
    flow meter of the node reads below its low-flow cut-off) for `settle`, the mean reading
    of each meter with a zero stability over the next `over` is its zero."""

    running: str | None  # tag: not 0 while the line runs
    settle: float  # s
    over: float  # s


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconciliationConfig:
    window: float  # s of data each reconciliation takes
    every: float  # s
    alpha: float
    confirm: int  # evaluations in a row naming one suspect before it is an alarm
    estimator: str = "wls"  # huber | fair: each record also carries the robust estimate
    correlations: tuple[tuple[str, str, float], ...] = ()  # (a, b, r): meters' errors


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
    # Commands taken from <prefix>/<site>/<gateway>/command/request (subscribe only; the
    # broker's ACL decides who may write there); () takes none and subscribes to nothing.
    commands: tuple[str, ...] = ()


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
    engine: str = "numba"  # the totalizer's arithmetic: numba's kernels or their Python twins
    balance_retention: float = 90 * 86400.0  # s: balance and alarm records kept for reports
    reconciliation: ReconciliationConfig | None = None
    manual_streams: tuple[ManualStreamConfig, ...] = ()
    telemetry_interval: float
    outbox: OutboxConfig
    mqtt: MqttConfig | None
    health: HealthConfig


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
    output_classes: tuple[tuple[str, str], ...] = ()  # (output, class) where not product
