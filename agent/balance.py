"""Mass balance of a node over a rolling window, and its alarm.

    imbalance = in − out − Δinventory

is judged against tolerance = fixed + relative · throughput + k · σ, where σ propagates each
meter's rated accuracy (taken as 2σ) over what that meter moved in the window, and the
inventory's level accuracy at both ends. The alarm needs the imbalance outside tolerance for
`persistence` seconds in a row; a window without enough good data is inconclusive and never
raises it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from .config import NodeConfig
from .totalizer import InventoryGauge, StreamTotal

OK = "ok"
EXCEEDED = "exceeded"  # outside tolerance, not yet for the persistence time
ALARM = "alarm"
INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, slots=True)
class Snapshot:
    mono: float
    wall: float
    inflow: float | None  # kg, cumulative net of the input streams
    outflow: float | None
    inventory: float | None  # kg in the node's inventories


@dataclass(frozen=True, slots=True)
class WindowResult:
    node: str
    start_wall: float
    end_wall: float
    inflow: float
    outflow: float
    inventory_start: float
    inventory_end: float
    imbalance: float
    relative: float
    sigma: float
    tolerance: float
    coverage: float
    status: str
    alarm_active: bool

    @property
    def delta_inventory(self) -> float:
        return self.inventory_end - self.inventory_start


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    node: str
    event: str  # "raised" or "cleared"
    mono: float
    wall: float
    since_mono: float  # when the condition began
    since_wall: float
    result: WindowResult
    hint: str


def _sum_at(items: list[StreamTotal], mono: float) -> float | None:
    total = 0.0
    for item in items:
        value = item.net_at(mono)
        if value is None:
            return None
        total += value
    return total


def _hint(imbalance: float) -> str:
    if imbalance > 0:
        return (
            "mass is missing: a leak or an unmetered outlet, an input meter reading high, "
            "or an output meter reading low"
        )
    return (
        "more mass than came in: an unmetered inlet, an input meter reading low, "
        "or an output meter reading high"
    )


class NodeBalance:
    """Snapshots a node's terms every tick; judges the last window every `evaluate_every`."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        inputs: list[StreamTotal],
        outputs: list[StreamTotal],
        inventories: list[InventoryGauge],
    ) -> None:
        self.config = config
        self.inputs = inputs
        self.outputs = outputs
        self.inventories = inventories
        self.snapshots: deque[Snapshot] = deque()
        self.next_evaluation: float | None = None
        self.alarm_active = False
        self._exceeded_since: tuple[float, float] | None = None
        self._within_since: float | None = None
        self.last: WindowResult | None = None

    def snapshot(self, mono: float, wall: float) -> None:
        inventory: float | None = 0.0
        for gauge in self.inventories:
            mass = gauge.mass_at(mono)
            if mass is None or inventory is None:
                inventory = None
            else:
                inventory += mass
        self.snapshots.append(
            Snapshot(mono, wall, _sum_at(self.inputs, mono), _sum_at(self.outputs, mono), inventory)
        )
        horizon = mono - self.config.window * 1.5
        while self.snapshots and self.snapshots[0].mono < horizon:
            self.snapshots.popleft()

    def due(self, mono: float) -> bool:
        if self.next_evaluation is None:
            self.next_evaluation = mono + self.config.evaluate_every
        return mono >= self.next_evaluation

    def evaluate(self, mono: float) -> tuple[WindowResult, AlarmEvent | None] | None:
        """Judge the window that ends at the newest snapshot."""
        assert self.next_evaluation is not None
        self.next_evaluation += self.config.evaluate_every
        if self.next_evaluation <= mono:  # we fell behind; do not evaluate in a burst
            self.next_evaluation = mono + self.config.evaluate_every
        if not self.snapshots:
            return None
        end = self.snapshots[-1]
        window_start = end.mono - self.config.window
        in_window = [s for s in self.snapshots if s.mono >= window_start - 1e-6]
        start = in_window[0]
        span = end.mono - start.mono
        complete = [s for s in in_window if _complete(s)]
        coverage = (len(complete) / len(in_window)) * min(span / self.config.window, 1.0)

        if _complete(start) and _complete(end) and span > 0:
            inflow = end.inflow - start.inflow  # type: ignore[operator]
            outflow = end.outflow - start.outflow  # type: ignore[operator]
            inv_start, inv_end = start.inventory, end.inventory
            assert inv_start is not None
            assert inv_end is not None
        else:
            inflow = outflow = math.nan
            inv_start = inv_end = math.nan
        imbalance = inflow - outflow - (inv_end - inv_start)
        throughput = max(abs(inflow), abs(outflow))
        sigma = self._sigma(start, end)
        tolerance = (
            self.config.tolerance_fixed
            + self.config.tolerance_relative * throughput
            + self.config.tolerance_sigma * sigma
        )
        conclusive = coverage >= self.config.min_coverage and not math.isnan(imbalance)
        exceeded = conclusive and abs(imbalance) > tolerance
        change = self._step(end, conclusive=conclusive, exceeded=exceeded)
        if not conclusive:
            status = INCONCLUSIVE
        elif self.alarm_active:
            status = ALARM
        else:
            status = EXCEEDED if exceeded else OK
        result = WindowResult(
            node=self.config.name,
            start_wall=start.wall,
            end_wall=end.wall,
            inflow=inflow,
            outflow=outflow,
            inventory_start=inv_start,
            inventory_end=inv_end,
            imbalance=imbalance,
            relative=imbalance / throughput if throughput > 0 else math.nan,
            sigma=sigma,
            tolerance=tolerance,
            coverage=coverage,
            status=status,
            alarm_active=self.alarm_active,
        )
        self.last = result
        if change is None:
            return result, None
        kind, since_mono, since_wall = change
        event = AlarmEvent(
            node=self.config.name,
            event=kind,
            mono=end.mono,
            wall=end.wall,
            since_mono=since_mono,
            since_wall=since_wall,
            result=result,
            hint=_hint(imbalance) if kind == "raised" else "back within tolerance",
        )
        return result, event

    def _sigma(self, start: Snapshot, end: Snapshot) -> float:
        """Standard uncertainty of the imbalance, kg."""
        variance = 0.0
        if _complete(start) and _complete(end):
            for streams, attr in ((self.inputs, "inflow"), (self.outputs, "outflow")):
                moved = abs(getattr(end, attr) - getattr(start, attr))
                # Streams of one side share the moved mass in proportion to their share of the
                # flow; with one stream a side (the usual case) this is exact.
                for stream in streams:
                    share = 1.0 / len(streams)
                    variance += (stream.config.accuracy / 2.0 * moved * share) ** 2
        for gauge in self.inventories:
            variance += 2.0 * gauge.sigma**2  # one reading at each end of the window
        return math.sqrt(variance)

    def _step(
        self, end: Snapshot, *, conclusive: bool, exceeded: bool
    ) -> tuple[str, float, float] | None:
        """The on-delay / off-delay state machine; returns (event, since mono, since wall)."""
        mono, wall = end.mono, end.wall
        if not conclusive:
            # Evidence must persist without a hole: a data gap restarts the on-delay.
            self._exceeded_since = None
            return None
        if not self.alarm_active:
            if not exceeded:
                self._exceeded_since = None
                return None
            if self._exceeded_since is None:
                self._exceeded_since = (mono, wall)
            since_mono, since_wall = self._exceeded_since
            if mono - since_mono >= self.config.persistence:
                self.alarm_active = True
                self._within_since = None
                return "raised", since_mono, since_wall
            return None
        if exceeded:
            self._within_since = None
            return None
        if self._within_since is None:
            self._within_since = mono
        if mono - self._within_since >= self.config.clear_after:
            self.alarm_active = False
            since = self._within_since
            self._exceeded_since = None
            return "cleared", since, wall - (mono - since)
        return None


def _complete(s: Snapshot) -> bool:
    return s.inflow is not None and s.outflow is not None and s.inventory is not None
