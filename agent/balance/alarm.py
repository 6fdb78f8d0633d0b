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
            # Evidence must persist without a hole: a data gap restarts both delays. An
            # active alarm keeps when it began (its reminders and its clearing name it).
            self._within_since = None
            if not self.active:
                self._exceeded_since = None
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

    def saved(self) -> dict[str, object]:
        """What a restart or a reload must know: whether the alarm is active, and since when
        (wall) its imbalance has been outside tolerance."""
        if not self.active or self._exceeded_since is None:
            return {"active": False}
        return {"active": True, "since": self._exceeded_since[1]}

    def restore(self, kept: object, mono: float, wall: float) -> None:
        """An alarm active when the agent stopped is active again, not raised a second time:
        it clears (and says so) when its node is back within tolerance for clear_after. An
        on-delay under way is not kept: a stop is a hole in the evidence."""
        if not isinstance(kept, dict) or kept.get("active") is not True:
            return
        since = kept.get("since")
        if isinstance(since, bool) or not isinstance(since, int | float) or since > wall:
            since = wall  # a wall clock stepped back: counted from now
        self.active = True
        self._exceeded_since = (mono - (wall - since), float(since))
        self._within_since = None
        self._announced = mono  # re_alarm counts from the restart


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
