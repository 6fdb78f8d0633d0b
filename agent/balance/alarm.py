"""A node's alarm: raised when the imbalance stays outside tolerance for `persistence`
(on-delay), cleared when it stays inside (1 − deadband) · tolerance for `clear_after`
(off-delay), reminded every `re_alarm` while active. An inconclusive window breaks both
delays' runs: evidence must persist without a hole."""

from __future__ import annotations

from ..config import NodeConfig
from .terms import CLEARED, RAISED, REPEATED


class Alarm:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.active = False
        self._exceeded_since: tuple[float, float] | None = None
        self._within_since: float | None = None
        self._announced: float = 0.0

    def step(
        self, mono: float, wall: float, imbalance: float, tolerance: float, *, conclusive: bool
    ) -> list[tuple[str, float, float, str]]:
        """One judged window: the events it makes, (kind, since mono, since wall, hint)."""
        cfg = self.config
        if not conclusive:
            # Evidence must persist without a hole: a data gap restarts both delays.
            self._exceeded_since = None
            self._within_since = None
            return []
        if not self.active:
            if abs(imbalance) <= tolerance:
                self._exceeded_since = None
                return []
            if self._exceeded_since is None:
                self._exceeded_since = (mono, wall)
            since_mono, since_wall = self._exceeded_since
            if mono - since_mono >= cfg.persistence:
                self.active = True
                self._within_since = None
                self._announced = mono
                return [(RAISED, since_mono, since_wall, _hint(imbalance))]
            return []
        if abs(imbalance) > tolerance * (1.0 - cfg.deadband):
            self._within_since = None
            if cfg.re_alarm > 0 and mono - self._announced >= cfg.re_alarm:
                self._announced = mono
                assert self._exceeded_since is not None
                since_mono, since_wall = self._exceeded_since
                return [(REPEATED, since_mono, since_wall, "still outside tolerance")]
            return []
        if self._within_since is None:
            self._within_since = mono
        if mono - self._within_since >= cfg.clear_after:
            self.active = False
            since = self._within_since
            self._exceeded_since = None
            return [(CLEARED, since, wall - (mono - since), "back within tolerance")]
        return []


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
