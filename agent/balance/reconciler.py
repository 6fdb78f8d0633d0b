"""Reconciliation of the node network while the agent runs.

Every `every` seconds, the masses each stream moved over the last `window` are reconciled
across the innermost nodes (agent/balance/reconcile.py does the mathematics). Each node that holds
inventory gets an accumulation stream, measured as its Δinventory; generation and
consumption are streams into and out of their node. A stream whose data is missing at either
end of the window is unmeasured for that window, and is estimated if the balances allow.

A gross error named by serial elimination in `confirm` evaluations in a row raises an alarm
on the suspect (a meter's stream or a leaking node); it clears when the global test has
passed `confirm` times in a row.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from ..config import NodeConfig, NodeTerms, ReconciliationConfig
from ..core.records import num, utc
from . import reconcile as rc
from .terms import Metered, Weighed

log = logging.getLogger(__name__)


def accumulation_name(node: str) -> str:
    return f"Δ{node}"


@dataclass(frozen=True, slots=True)
class _Snap:
    mono: float
    wall: float
    streams: dict[str, float | None]
    inventories: dict[str, float | None]  # per node, kg


@dataclass(frozen=True, slots=True)
class SuspectEvent:
    event: str  # raised | cleared
    suspect: rc.GrossError
    since_wall: float
    wall: float


class Reconciler:
    def __init__(
        self,
        config: ReconciliationConfig,
        nodes: tuple[NodeConfig, ...],
        terms: dict[str, NodeTerms],
        streams: Mapping[str, Metered],
        gauges: Mapping[str, Weighed],
    ) -> None:
        self.config = config
        leaves = [n.name for n in nodes if not n.nodes]
        base = rc.network_of(
            leaves,
            {n: terms[n].inputs for n in leaves},
            {n: terms[n].outputs for n in leaves},
        )
        extra = []
        for n in leaves:
            extra += [rc.Stream(s, None, n) for s in terms[n].generation]
            extra += [rc.Stream(s, n, None) for s in terms[n].consumption]
            if terms[n].inventories:
                extra.append(rc.Stream(accumulation_name(n), n, None))
        self.network = rc.Network(base.nodes, base.streams + tuple(extra))
        self.streams = {s.name: streams[s.name] for s in self.network.streams if s.name in streams}
        self.gauges = {n: [gauges[g] for g in terms[n].inventories] for n in leaves}
        self.snaps: deque[_Snap] = deque()
        self.next_at: float | None = None
        self.last: tuple[rc.Reconciliation, rc.Reconciliation] | None = None
        self.active: rc.GrossError | None = None
        self._candidate: tuple[str, str] | None = None
        self._named = 0
        self._named_since = math.nan
        self._passes = 0

    def _snap(self, mono: float, wall: float) -> _Snap:
        inventories: dict[str, float | None] = {}
        for node, gauges in self.gauges.items():
            if not gauges:
                continue
            total: float | None = 0.0
            for gauge in gauges:
                mass = gauge.mass_at(mono)
                total = None if mass is None or total is None else total + mass
            inventories[node] = total
        return _Snap(mono, wall, {n: s.net_at(mono) for n, s in self.streams.items()}, inventories)

    def tick(self, mono: float, wall: float) -> tuple[dict[str, Any] | None, list[SuspectEvent]]:
        """A reconciliation record when one is due, and the suspect alarm's events."""
        if self.next_at is None:
            self.next_at = mono
        if mono < self.next_at:
            return None, []
        self.next_at += self.config.every
        if self.next_at <= mono:
            self.next_at = mono + self.config.every
        self.snaps.append(self._snap(mono, wall))
        while len(self.snaps) > 1 and self.snaps[1].mono <= mono - self.config.window + 1e-6:
            self.snaps.popleft()
        start, end = self.snaps[0], self.snaps[-1]
        if end.mono - start.mono < self.config.window - 1e-6:
            return None, []  # not a full window yet
        values, sigmas = self._measured(start, end)
        # Two meters sharing an error (a density, a temperature): ρ·σa·σb, for the pairs
        # whose two meters both read in this window.
        covariances = {
            (a, b): r * sigmas[a] * sigmas[b]
            for a, b, r in self.config.correlations
            if a in sigmas and b in sigmas
        }
        try:
            plain, final = rc.diagnose(
                self.network, values, sigmas, alpha=self.config.alpha, covariances=covariances
            )
            robust = None
            if self.config.estimator != rc.WLS:
                robust = rc.robust(
                    self.network, values, sigmas, estimator=self.config.estimator,
                    alpha=self.config.alpha,
                )  # fmt: skip
        except (ValueError, ArithmeticError) as exc:  # numpy's LinAlgError is a ValueError
            log.warning("reconciliation skipped for the window ending now: %s", exc)
            return None, []
        self.last = plain, final
        body = self._body(start, end, plain, final)
        if robust is not None:
            z = NormalDist().inv_cdf(1 - robust.alpha / 2)
            body["robust"] = {
                "estimator": self.config.estimator,
                "converged": not robust.unconverged,
                "streams": [
                    {"stream": s.name, "reconciled_kg": num(s.reconciled),
                     "interval_kg": num(z * s.reconciled_sigma)}
                    for s in robust.streams
                ],
            }  # fmt: skip
        return body, self._events(plain, final, wall)

    def _measured(self, start: _Snap, end: _Snap) -> tuple[dict[str, float], dict[str, float]]:
        values: dict[str, float] = {}
        sigmas: dict[str, float] = {}
        for name, stream in self.streams.items():
            a, b = start.streams[name], end.streams[name]
            if a is None or b is None:
                continue
            moved = b - a
            sigma = rc.sigma_from_accuracy(moved, stream.accuracy)
            if sigma > 0:
                values[name], sigmas[name] = moved, sigma
        for node, gauges in self.gauges.items():
            if not gauges:
                continue
            a_inv, b_inv = start.inventories[node], end.inventories[node]
            if a_inv is None or b_inv is None:
                continue
            values[accumulation_name(node)] = b_inv - a_inv
            sigmas[accumulation_name(node)] = math.sqrt(sum(2 * g.sigma**2 for g in gauges))
        return values, sigmas

    def _events(
        self, plain: rc.Reconciliation, final: rc.Reconciliation, wall: float
    ) -> list[SuspectEvent]:
        events = []
        top = final.gross_errors[0] if final.gross_errors else None
        if top is None:
            self._candidate, self._named = None, 0
            self._passes = self._passes + 1 if plain.passed else 0
            if self.active is not None and self._passes >= self.config.confirm:
                events.append(SuspectEvent("cleared", self.active, self._named_since, wall))
                self.active = None
            return events
        self._passes = 0
        key = (top.kind, top.where)
        if key != self._candidate:
            self._candidate, self._named, self._named_since = key, 0, wall
        self._named += 1
        active_key = (self.active.kind, self.active.where) if self.active else None
        if self._named >= self.config.confirm and active_key != key:
            if self.active is not None:
                events.append(SuspectEvent("cleared", self.active, self._named_since, wall))
            self.active = top
            events.append(SuspectEvent("raised", top, self._named_since, wall))
        return events

    def _body(
        self, start: _Snap, end: _Snap, plain: rc.Reconciliation, final: rc.Reconciliation
    ) -> dict[str, Any]:
        z = NormalDist().inv_cdf(1 - plain.alpha / 2)
        return {
            "window_start": utc(start.wall),
            "window_end": utc(end.wall),
            "global_test": {
                "statistic": num(plain.statistic),
                "dof": plain.dof,
                "critical": num(plain.critical),
                "passed": plain.passed,
            },
            "measurement_test_critical": num(plain.test_critical),
            "streams": [
                {
                    "stream": s.name,
                    "measured_kg": num(s.measured),
                    "sigma_kg": num(s.sigma),
                    "reconciled_kg": num(s.reconciled),
                    "interval_kg": num(z * s.reconciled_sigma),
                    "class": s.classification,
                    "measurement_test": num(s.adjustment_test),
                }
                for s in plain.streams
            ],
            "gross_errors": [gross_error_body(e) for e in final.gross_errors],
        }


def log_suspect(log: logging.Logger, event: SuspectEvent, what: str = "reconciliation") -> None:
    hint = event.suspect.describe("kg")
    if event.event == "raised":
        log.warning("%s: gross error: %s", what, hint)
    else:
        log.info("%s: cleared: %s", what, hint)


def suspect_body(event: SuspectEvent) -> dict[str, Any]:
    """The alarm record of a suspect raised or cleared (node "network")."""
    hint = event.suspect.describe("kg")
    return {
        "node": "network",
        "event": event.event,
        "since": utc(event.since_wall),
        "at": utc(event.wall),
        "hint": hint if event.event == "raised" else f"no longer found: {hint}",
        "gross_error": gross_error_body(event.suspect),
    }


def gross_error_body(e: rc.GrossError) -> dict[str, Any]:
    return {
        "kind": e.kind,
        "where": e.where,
        "size_kg": num(e.size),
        "statistic": num(e.statistic),
        "indistinguishable_from": [{"kind": k, "where": w} for k, w in e.alternatives],
        "description": e.describe("kg"),
    }
