"""Drift: a two-sided CUSUM on the imbalance of each `evaluate_every` interval divided by its
σ catches a residual that creeps up long before it crosses the window's tolerance. The
intervals do not overlap, so consecutive values are independent apart from the inventory
reading they share, and the CUSUM's run lengths hold."""

from __future__ import annotations

import math
from collections.abc import Callable

from ..config import NodeConfig
from .terms import DRIFT, AlarmEvent, Snapshot, Terms, WindowResult

DRIFT_LEARN = 30  # intervals that set the drift baseline before the CUSUM runs
DRIFT_MEMORY = 86400.0  # s over which the baseline follows the plant afterwards


class Drift:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.cusum_high = 0.0
        self.cusum_low = 0.0
        self._from: Snapshot | None = None  # where the next interval starts
        self._started: tuple[float, float] | None = None
        self._mass = 0.0
        self._time = 0.0
        self._z_count = 0
        self._drifting: int | None = None  # +1 / −1 while a drift episode lasts
        self._z_mean = 0.0
        self._z_var = 0.0
        self._rate_mean = 0.0

    def begin(self, snap: Snapshot) -> None:
        """The first interval starts here (when every term is known)."""
        self._from = snap if snap.ok else None

    def step(
        self,
        snap: Snapshot,
        terms_of: Callable[[Snapshot, Snapshot], Terms],
        *,
        status: str,
        alarm_active: bool,
    ) -> AlarmEvent | None:
        """One CUSUM step on the interval since the last; an event when it crosses h.

        The statistic is the interval's imbalance over its propagated σ, less its own
        baseline: a steady offset between meters that are each within their rating is not a
        drift. The baseline is learned over the first DRIFT_LEARN intervals and then follows
        over about a day; the spread used is the larger of the rated one and the one observed,
        so a noisier instrument than its data sheet says does not raise drift after drift.
        """
        cfg = self.config
        start, self._from = self._from, snap if snap.ok else None
        if cfg.drift_h <= 0 or start is None or not snap.ok or snap.mono <= start.mono:
            return None
        terms = terms_of(start, snap)
        if not terms.sigma > 0 or not math.isfinite(terms.imbalance):
            return None
        dt = snap.mono - start.mono
        z_raw = terms.imbalance / terms.sigma
        rate = terms.imbalance / dt * 3600.0
        self._z_count += 1
        if self._z_count <= DRIFT_LEARN:  # plain running mean and variance
            step = 1.0 / self._z_count
        else:
            step = min(1.0, cfg.evaluate_every / DRIFT_MEMORY)
        delta = z_raw - self._z_mean
        self._z_mean += step * delta
        self._z_var = (1.0 - step) * (self._z_var + step * delta * delta)
        self._rate_mean += step * (rate - self._rate_mean)
        if self._z_count <= DRIFT_LEARN:
            return None
        z = (z_raw - self._z_mean) / max(1.0, math.sqrt(self._z_var))
        if self._started is None:
            self._started = (start.mono, start.wall)
        self._mass += terms.imbalance
        self._time += dt
        self.cusum_high = max(0.0, self.cusum_high + z - cfg.drift_k)
        self.cusum_low = max(0.0, self.cusum_low - z - cfg.drift_k)
        if self._drifting is not None:
            # One event per episode: it ends when the residual is back at its baseline. The
            # sum is capped so that a long episode does not take as long again to unwind.
            cap = 2.0 * cfg.drift_h
            self.cusum_high, self.cusum_low = min(self.cusum_high, cap), min(self.cusum_low, cap)
            if (self.cusum_high if self._drifting > 0 else self.cusum_low) == 0.0:
                self._drifting = None
                self._started = None
                self._mass = self._time = 0.0
            return None
        if max(self.cusum_high, self.cusum_low) <= cfg.drift_h:
            if self.cusum_high == 0.0 and self.cusum_low == 0.0:
                self._started = None
                self._mass = self._time = 0.0
            return None
        self._drifting = 1 if self.cusum_high > cfg.drift_h else -1
        recent = self._mass / self._time * 3600.0
        direction = "more missing" if self._drifting > 0 else "more gained"
        since_mono, since_wall = self._started
        hint = (
            f"the imbalance has moved off its baseline: {abs(recent - self._rate_mean):.3g} kg/h "
            f"{direction} than its usual {self._rate_mean:+.3g} kg/h since then, before the "
            "window's tolerance is crossed: a meter drifting, or a small leak starting"
        )
        terms = Terms(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
        result = WindowResult(
            cfg.name, "drift", "", since_wall, snap.wall, terms, math.nan, 1.0,
            status, alarm_active,
            self.cusum_high, self.cusum_low,
        )  # fmt: skip
        return AlarmEvent(cfg.name, DRIFT, snap.mono, snap.wall, since_mono, since_wall, result,
                          hint)  # fmt: skip
