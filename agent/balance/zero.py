"""The zero check engineers do by hand with the line full and still, done whenever the line
stops: a flow meter that reads more than its zero stability while nothing flows has a shifted
zero, and every reading it gives while the line runs carries that offset.

The line stands still while the node's `running` tag reads 0 or, without one, while every
flow meter of the node reads below its low-flow cut-off. After it has stood still for
`settle` (pumps run down, valves close), the mean reading of each meter with a zero stability
over the next `over` is its zero. One `zero_drift` event per meter when its zero leaves the
stability, one `zero_ok` when a later stop finds it back (after re-zeroing).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..config import ZeroCheckConfig
from ..core.records import num, utc

log = logging.getLogger(__name__)

ZERO_DRIFT, ZERO_OK = "zero_drift", "zero_ok"
HOUR = 3600.0


class Still(Protocol):
    """A stream as the zero check reads it (StreamTotal)."""

    @property
    def signal(self) -> float: ...  # the last good reading, as the meter gave it

    @property
    def raw_flow(self) -> float: ...  # its mass flow before the cut-off, kg/s

    @property
    def raw_mono(self) -> float: ...  # its time


@dataclass(frozen=True, slots=True)
class Meter:
    name: str
    stream: Still
    cutoff: float  # in the signal's SI; 0: none
    max_gap: float  # s: an older reading says nothing of now
    stability: float | None  # kg/s; None: in the run state only, not checked


@dataclass(frozen=True, slots=True)
class ZeroEvent:
    node: str
    event: str  # zero_drift | zero_ok
    stream: str
    wall: float
    stopped_wall: float  # when the line stopped
    from_wall: float  # the mean was taken from here ...
    offset: float  # kg/s: the mean reading
    stability: float  # kg/s
    samples: int

    @property
    def hint(self) -> str:
        if self.event == ZERO_OK:
            return (
                f"{self.stream} reads {self.offset * HOUR:+.3g} kg/h with the line stopped, "
                f"within its zero stability of {self.stability * HOUR:.3g} kg/h again"
            )
        return (
            f"{self.stream} reads {self.offset * HOUR:+.3g} kg/h with the line stopped "
            f"(mean of {self.samples} readings), more than its zero stability of "
            f"{self.stability * HOUR:.3g} kg/h: its zero has shifted, and every reading while "
            "the line runs carries the offset. Zero the meter with the line full and still"
        )


class ZeroCheck:
    """One node's zero check, stepped every cycle after its streams are integrated."""

    def __init__(self, node: str, config: ZeroCheckConfig, meters: Sequence[Meter]) -> None:
        self.node = node
        self.config = config
        self.meters = list(meters)
        self.checked = [m for m in self.meters if m.stability is not None]
        self.drifted: set[str] = set()
        self.checks = 0  # stopped periods judged
        self._since: tuple[float, float] | None = None  # (mono, wall) the line stopped
        self._sums: dict[str, tuple[float, int]] = {}
        self._seen: dict[str, float] = {}  # each meter's last sample taken (raw_mono)
        self._judged = False

    def _stopped(self, mono: float, running: Callable[[str], float] | None) -> bool:
        tag = self.config.running
        if tag is not None:
            value = running(tag) if running is not None else math.nan
            return value == 0.0  # unreadable (NaN) is not known to be stopped
        for m in self.meters:
            fresh = mono - m.stream.raw_mono <= m.max_gap
            if not fresh or not abs(m.stream.signal) < m.cutoff:
                return False
        return True

    def tick(
        self, mono: float, wall: float, running: Callable[[str], float] | None = None
    ) -> list[ZeroEvent]:
        if not self._stopped(mono, running):
            self._since, self._sums, self._judged = None, {}, False
            return []
        if self._since is None:
            self._since = (mono, wall)
        if self._judged:
            return []  # once per stop
        began = self._since[0] + self.config.settle
        if mono < began:
            return []
        for m in self.checked:
            at = m.stream.raw_mono
            if math.isfinite(at) and at >= began and at > self._seen.get(m.name, -math.inf):
                self._seen[m.name] = at
                total, n = self._sums.get(m.name, (0.0, 0))
                self._sums[m.name] = (total + m.stream.raw_flow, n + 1)
        if mono < began + self.config.over:
            return []
        self._judged = True
        self.checks += 1
        return self._judge(wall, self._since[1] + self.config.settle)

    def _judge(self, wall: float, from_wall: float) -> list[ZeroEvent]:
        events = []
        assert self._since is not None
        for m in self.checked:
            assert m.stability is not None
            total, n = self._sums.get(m.name, (0.0, 0))
            if n == 0:
                continue  # no good reading while it stood still: nothing to say
            offset = total / n
            outside = abs(offset) > m.stability
            if outside == (m.name in self.drifted):
                continue
            kind = ZERO_DRIFT if outside else ZERO_OK
            (self.drifted.add if outside else self.drifted.discard)(m.name)
            event = ZeroEvent(
                self.node, kind, m.name, wall, self._since[1], from_wall, offset, m.stability, n
            )
            events.append(event)
            log.log(
                logging.WARNING if outside else logging.INFO,
                "node %s: zero check: %s",
                self.node,
                event.hint,
                extra={"node": self.node},
            )
        return events


def zero_body(event: ZeroEvent) -> dict[str, Any]:
    return {
        "node": event.node,
        "event": event.event,
        "since": utc(event.stopped_wall),
        "at": utc(event.wall),
        "hint": event.hint,
        "zero_check": {
            "stream": event.stream,
            "offset_kg_h": num(event.offset * HOUR),
            "zero_stability_kg_h": num(event.stability * HOUR),
            "line_stopped": utc(event.stopped_wall),
            "mean_from": utc(event.from_wall),
            "mean_to": utc(event.wall),
            "samples": event.samples,
        },
    }
