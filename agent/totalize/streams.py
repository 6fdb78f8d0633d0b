"""A stream's total: samples of one cycle buffered into arrays and handed to the numba
kernels in one call (flow, volume with density, or a meter's own totalizer register); what a
restart must keep, kept."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..config import StreamConfig
from ..core import clock
from . import state as layout
from .conditions import density
from .engine import Engine, load
from .gas import Composition
from .hourly import HOUR, OpenHour, hour_body, hour_index
from .inventories import _gauge

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Period:
    """What a stream moved since its last totals record."""

    mass: float
    start_wall: float | None
    end_wall: float | None
    estimated: float
    gap_time: float


class StreamTotal:
    """The running total of one stream (kg), fed sample by sample, integrated per cycle.

    `flow` is the meter's signal in SI: a mass flow, a volume flow, or a totalizer
    register's reading. The totals are non-resettable: they only ever grow, persist across
    restarts (see `saved`), and a state saved by an older release is carried over.
    """

    def __init__(
        self,
        config: StreamConfig,
        *,
        saved: dict[str, object] | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.config = config
        self.engine = engine if engine is not None else load()
        self.state = layout.new_state()
        self.reported = (0.0, 0.0, 0.0)  # net, estimated, gap time at the last totals record
        self.last_wall: float | None = None
        self.first_wall: float | None = None  # first sample integrated by this process
        self.period_start_wall: float | None = None
        self._down_since: float | None = None  # wall time of the last sample before a restart
        self._down_mono: float | None = None  # its monotonic time, when this is the same boot
        self.last_mono: float | None = None
        self._downtime_unknown = False  # the clock went back across a reboot: gap unknown
        self.hour: OpenHour | None = None
        self.closed_hours: list[dict[str, Any]] = []  # hourly records not yet taken
        if saved is not None:
            state = saved["state"]
            assert isinstance(state, list)
            self.state = layout.upgrade_state(state)
            # Monotonic time restarts with the process (and the boot): the first sample after
            # a restart opens a new interval instead of bridging the downtime.
            self.state[layout.HAS_LAST] = 0.0
            self.state[layout.PENDING_BAD] = 0.0
            reported = saved["reported"]
            assert isinstance(reported, list)
            self.reported = (float(reported[0]), float(reported[1]), float(reported[2]))
            # The mass reported next includes what was integrated before the restart since
            # the last totals record: its period starts where that record ended.
            start = saved.get("period_start")
            self.period_start_wall = float(start) if isinstance(start, float | int) else None
            down_since = saved.get("last_wall")
            self._down_since = float(down_since) if isinstance(down_since, float | int) else None
            # Within one boot the monotonic clock goes on across a process restart and does
            # not step with the wall clock: the downtime is measured by it.
            down_mono = saved.get("last_mono")
            if saved.get("boot_id") == clock.boot_id() and isinstance(down_mono, float | int):
                self._down_mono = float(down_mono)
            hour = saved.get("hour")
            if isinstance(hour, dict):
                self.hour = OpenHour.restore(hour)
        self._t: list[float] = []
        self._wall: list[float] = []
        self._flow: list[float] = []
        self._temp: list[float] = []
        self._pressure: list[float] = []
        self.density_flags: dict[str, int] = {}  # validity flag → cycles it was raised in
        self.meter_alarms: tuple[str, ...] = ()  # the meter's alarms active in its last reply
        # A gas whose composition a chromatograph analyzes: its last good analysis, and why a
        # later one was refused while that one is kept (the gateway sets both).
        self.composition: Composition | None = None
        self.composition_flag: str | None = None
        self.alarm_samples: dict[str, int] = {}  # alarm flag's tag → samples taken under it
        self.period_alarms: dict[str, int] = {}  # the same, since the last totals record
        # The last good sample as the meter gave it, before the low-flow cut-off: its signal
        # (SI of its kind), its mass flow (kg/s) and its time, kept only while a zero check
        # watches the stream (`watched`, set by the gateway): a cycle pays nothing otherwise.
        self.watched = False
        self.signal = math.nan
        self.raw_flow = math.nan
        self.raw_mono = math.nan

    def add(
        self,
        mono: float,
        wall: float,
        flow: float,
        temperature: float = math.nan,
        pressure: float = math.nan,
    ) -> None:
        """Queue one sample (SI; NaN when the reading is bad)."""
        self._t.append(mono)
        self._wall.append(wall)
        self._flow.append(flow)
        self._temp.append(temperature)
        self._pressure.append(pressure)

    def note_alarms(self, alarms: tuple[str, ...]) -> None:
        """The meter's alarms active in the reply that gave the sample just added."""
        self.meter_alarms = alarms
        for tag in alarms:
            self.alarm_samples[tag] = self.alarm_samples.get(tag, 0) + 1
            self.period_alarms[tag] = self.period_alarms.get(tag, 0) + 1

    def integrate(self) -> None:
        """Run the kernel over the samples queued since the last call, hour by hour."""
        if not self._t:
            return
        t = np.asarray(self._t, dtype=np.float64)
        wall = np.asarray(self._wall, dtype=np.float64)
        flow = np.asarray(self._flow, dtype=np.float64)
        temp = np.asarray(self._temp, dtype=np.float64)
        pressure = np.asarray(self._pressure, dtype=np.float64)
        hours = np.floor(wall / HOUR)
        start = 0
        while start < t.size:
            if self.hour is None:
                self.hour = OpenHour(int(hours[start]), self.state.tolist())
            # A wall clock stepped back stays in the open hour; only a later hour closes it.
            later = np.nonzero(hours[start:] > self.hour.index)[0]
            end = t.size if later.size == 0 else start + int(later[0])
            part = slice(start, end)
            self._integrate(t[part], wall[part], flow[part], temp[part], pressure[part])
            if end < t.size:
                self._close_hour(int(hours[end]))
            start = end
        self._t.clear()
        self._wall.clear()
        self._flow.clear()
        self._temp.clear()
        self._pressure.clear()

    def roll_hour(self, wall: float) -> None:
        """Close the open hour once the clock has left it, whether samples came or not."""
        if self.hour is not None and hour_index(wall) > self.hour.index:
            self._close_hour(hour_index(wall))

    def _close_hour(self, next_index: int) -> None:
        assert self.hour is not None
        ignore = self.config.reverse == "ignore"
        model = self.config.density
        standard = None
        if model is not None:
            if model.model == "gas":
                conditions = (model.standard_temperature, model.standard_pressure)
            else:
                conditions = (model.reference_temperature, 101325.0)
            rho_standard = model.standard_density
            if model.composition_device is not None:
                # The hour's standard volume at the analysis in force when it closes.
                rho_standard = (
                    math.nan
                    if self.composition is None
                    else model.standard_density_of(self.composition)
                )
            standard = (rho_standard, *conditions)
        self.closed_hours.append(
            hour_body(
                self.config.name, self.hour, self.state, ignore_reverse=ignore, standard=standard
            )
        )
        self.hour = OpenHour(next_index, self.state.tolist())

    def _integrate(
        self,
        t: npt.NDArray[np.float64],
        wall: npt.NDArray[np.float64],
        flow: npt.NDArray[np.float64],
        temp: npt.NDArray[np.float64],
        pressure: npt.NDArray[np.float64],
    ) -> None:
        cfg = self.config
        factor = cfg.meter_factor
        last_t = float(self.state[layout.LAST_T]) if self.state[layout.HAS_LAST] else math.nan
        averaged: dict[str, npt.NDArray[np.float64]] = {}
        if cfg.mass_total is not None:
            good = np.isfinite(flow)
            self.state = self.engine.difference_register(
                t, flow * factor, good, self.state, cfg.rollover * factor, cfg.max_flow * factor
            )
            mass_flow = np.full_like(flow, math.nan)  # a register carries no flow to weigh by
        elif cfg.volume_flow is not None:
            model = cfg.density
            assert model is not None
            gauge = _gauge(model, pressure)
            volume = np.where(np.abs(flow) < cfg.low_flow_cutoff, 0.0, flow)
            if model.model in ("constant", "linear"):
                temp_in = temp if model.model == "linear" else np.full_like(temp, 293.15)
                expansion = model.expansion if model.model == "linear" else 0.0
                self.state = self.engine.integrate_volume(
                    t,
                    flow,
                    temp_in,
                    gauge,
                    np.isfinite(flow),
                    self.state,
                    cfg.max_gap,
                    cfg.low_flow_cutoff,
                    model.reference * factor,
                    model.reference_temperature,
                    expansion,
                    model.compressibility,
                )
                rho = model.reference / (
                    (1.0 + expansion * (temp_in - model.reference_temperature))
                    * (1.0 - model.compressibility * gauge)
                )
                mass_flow = volume * rho * factor
            else:
                rho, flags = density(
                    model, temp, pressure, engine=self.engine, composition=self.composition
                )
                if self.composition_flag is not None:
                    flags.append(self.composition_flag)
                self._count_flags(flags)
                mass_flow = volume * rho * factor
                self.state = self.engine.integrate_flow(
                    t, mass_flow, np.isfinite(mass_flow), self.state, cfg.max_gap, 0.0
                )
            # A sample without its temperature or pressure is as bad as one without flow.
            good = np.isfinite(mass_flow)
            if model.temperature is not None:
                averaged["temperature"] = temp
            if model.pressure is not None:
                averaged["pressure"] = pressure
            averaged["density"] = rho
        else:
            mass_flow = flow * factor
            good = np.isfinite(mass_flow)
            self.state = self.engine.integrate_flow(
                t, mass_flow, good, self.state, cfg.max_gap, cfg.low_flow_cutoff * factor
            )
        if self.watched:
            raw = flow * averaged["density"] * factor if "density" in averaged else flow * factor
            finite = np.flatnonzero(np.isfinite(raw))
            if finite.size:
                k = int(finite[-1])
                self.signal, self.raw_flow, self.raw_mono = (
                    float(flow[k]),
                    float(raw[k]),
                    float(t[k]),
                )
        assert self.hour is not None
        if averaged:
            self.hour.weigh(t, mass_flow, averaged, last_t)
        self._note_walls(wall[good].tolist(), t[good].tolist())

    def _count_flags(self, flags: list[str]) -> None:
        for flag in flags:
            if flag not in self.density_flags:
                log.warning("stream %s: %s", self.config.name, flag)
            self.density_flags[flag] = self.density_flags.get(flag, 0) + 1

    def _note_walls(self, good_walls: list[float], good_monos: list[float]) -> None:
        if not good_walls:
            return
        if self._down_mono is not None:
            # The downtime's quantity is unknown: flagged as gap time, measured by the
            # monotonic clock within one boot ...
            self.state[layout.GAP_TIME] += max(good_monos[0] - self._down_mono, 0.0)
        elif self._down_since is not None:
            # ... and by the wall clock across a reboot. A wall clock earlier than before
            # (a gateway without RTC that booted at an old time) cannot say how long the
            # gateway was down: the gap is unknown, and the totals record says so (gap_s
            # null) instead of claiming there was none.
            downtime = good_walls[0] - self._down_since
            if downtime < 0:
                self._downtime_unknown = True
                log.warning(
                    "stream %s: the wall clock is %.0f s earlier than before the restart "
                    "(no real-time clock?): the downtime is unknown; its totals say gap_s null",
                    self.config.name,
                    -downtime,
                )
            else:
                self.state[layout.GAP_TIME] += downtime
        self._down_since = self._down_mono = None
        if self.first_wall is None:
            self.first_wall = good_walls[0]
        if self.period_start_wall is None:
            self.period_start_wall = self.last_wall or good_walls[0]
        self.last_wall = good_walls[-1]
        self.last_mono = good_monos[-1]

    @property
    def accuracy(self) -> float:
        return self.config.accuracy

    @property
    def forward(self) -> float:
        return layout.total(self.state, layout.FORWARD)

    @property
    def reverse(self) -> float:
        return layout.total(self.state, layout.REVERSE)

    @property
    def net(self) -> float:
        """The stream's quantity: forward less reverse, or forward alone when reverse is
        ignored."""
        if self.config.reverse == "ignore":
            return self.forward
        return self.forward - self.reverse

    @property
    def last_flow(self) -> float:
        """Mass flow of the last good sample, kg/s (NaN before the first one, or for a
        register, which gives quantity, not flow)."""
        if not self.state[layout.HAS_LAST] or self.config.mass_total is not None:
            return math.nan
        flow = float(self.state[layout.LAST_Q])
        return max(flow, 0.0) if self.config.reverse == "ignore" else flow

    def net_at(self, mono: float) -> float | None:
        """Net total extrapolated to `mono` with the last flow; None when the data is too old.

        Streams are polled at different instants; a balance compares them at one instant.
        """
        if not self.state[layout.HAS_LAST]:
            return None
        age = mono - float(self.state[layout.LAST_T])
        if age > self.config.max_gap:
            return None
        flow = self.last_flow
        return self.net + (0.0 if math.isnan(flow) else flow * max(age, 0.0))

    def take_period_alarms(self) -> dict[str, int]:
        """The samples taken under each meter alarm since the last call (a totals period)."""
        alarms, self.period_alarms = self.period_alarms, {}
        return alarms

    def close_period(self) -> Period:
        """The quantity since the last totals record; the next period starts now."""
        net = self.net
        estimated = float(self.state[layout.ESTIMATED])
        gap = float(self.state[layout.GAP_TIME])
        period = Period(
            mass=net - self.reported[0],
            start_wall=self.period_start_wall,
            end_wall=self.last_wall,
            estimated=estimated - self.reported[1],
            gap_time=math.nan if self._downtime_unknown else gap - self.reported[2],
        )
        self._downtime_unknown = False
        self.reported = (net, estimated, gap)
        self.period_start_wall = None
        return period

    def take_hours(self) -> list[dict[str, Any]]:
        hours, self.closed_hours = self.closed_hours, []
        return hours

    def saved(self) -> dict[str, object]:
        return {
            "state": self.state.tolist(),
            "reported": list(self.reported),
            "last_wall": self.last_wall if self.last_wall is not None else self._down_since,
            "period_start": (
                self.period_start_wall if self.period_start_wall is not None else self.last_wall
            ),
            "last_mono": self.last_mono if self.last_mono is not None else self._down_mono,
            "boot_id": clock.boot_id(),
            "hour": self.hour.saved() if self.hour is not None else None,
        }
