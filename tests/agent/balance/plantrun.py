"""The agent's pipeline (Gateway: totalizer, balances, reconciliation) fed by the simulated
plant in one process on a simulated clock, so hours of plant run in seconds.

The network path (pymodbus slaves, TLS broker) is covered by the end-to-end tests; here the
plant's readings go straight into Batches and the records into the outbox, with its value
faults (bias, drift, stuck), dropouts and alarm flags applied as its Modbus server and the
Modbus poller would apply them (the poller's own rule: drivers.base.meter_alarms).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from massgate.agent import config as config_module
from massgate.agent.core.records import Record
from massgate.agent.core.samples import Batch, Quality
from massgate.agent.runtime.gateway import Gateway
from massgate.agent.store.outbox import Outbox
from massgate.drivers import profiles
from massgate.drivers.base import meter_alarms
from massgate.drivers.sim import plantspec
from massgate.drivers.sim.plant import Plant

WALL0 = 1.8e9  # a fixed epoch (2027-01-15): records are the same from run to run


@dataclass
class PlantRun:
    plant: Plant
    gateway: Gateway
    outbox: Outbox
    meters: list[str]
    period: float
    clock: list[float]
    now: float = 0.0
    records: list[Record] = field(default_factory=list)
    # Values of tags no plant meter has (a PLC's batch register): read as device "plc".
    plc: dict[str, float] = field(default_factory=dict)
    # Added to the wall clock from now on: a step of the gateway's clock (NTP, no RTC).
    wall_offset: float = 0.0

    _pending: list[Record] = field(default_factory=list)
    _saved: dict[str, Any] | None = None

    def run_for(self, seconds: float, each: Callable[[PlantRun], None] | None = None) -> None:
        run_together([self], seconds, each)

    def _step(self, step: int, last: bool) -> None:
        mono, wall = self.now, WALL0 + self.now + self.wall_offset
        t = self.plant.now()
        if self.plc:
            tagged = {f"plc.{k}": v for k, v in self.plc.items()}
            self.gateway.ingest(Batch("plc", mono, wall, tagged, Quality.GOOD))
        for meter in self.meters:
            if meter == "plc":
                continue
            values = self.plant.faults.apply(meter, t, self.plant.read(meter))
            if self.plant.faults.find("dropout", meter, t) is not None:
                values = dict.fromkeys(values, math.nan)
                quality = Quality.BAD
            else:
                quality = Quality.GOOD
            tagged = {f"{meter}.{k}": v for k, v in values.items()}
            flags = [
                (f"{meter}.{p.name}", p.alarm)
                for p in profiles.load(self.plant.spec.meter(meter).profile).points
                if p.alarm is not None
            ]
            quality, error, alarms = meter_alarms(flags, tagged, quality, None)
            self.gateway.ingest(Batch(meter, mono, wall, tagged, quality, error, alarms))
        self.gateway.cycle(mono, wall)
        records, totals = self.gateway.take_pending(mono)
        self._pending += records
        # Each save holds what changed since the last one (the state beside the totals only
        # when it changed): the minute's commit holds them all, as the agent's commits do.
        self._saved = {**(self._saved or {}), **(totals or {})} or None
        self.records.extend(records)
        # One commit a minute of plant time: a day of plant runs in seconds, not minutes.
        if step % 30 == 29 or last:
            self.outbox.put(self._pending, totals=self._saved)
            self._pending, self._saved = [], None
            if last:
                self.outbox.sync()  # everything sendable, as after a stop

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [r.body for r in self.records if r.kind == kind]

    def close(self) -> None:
        self.outbox.close()


def run_together(
    runs: list[PlantRun], seconds: float, each: Callable[[PlantRun], None] | None = None
) -> None:
    """Step gateways that read one plant on one clock (see `beside`)."""
    first = runs[0]
    steps = round(seconds / first.period)
    for step in range(steps):
        first.now += first.period
        first.clock[0] = first.now
        for run in runs:
            run.now = first.now
            run._step(step, step == steps - 1)
            if each is not None:
                each(run)


def start(
    tmp_path: Path,
    config_text: str,
    *,
    plant_text: str | None = None,
    period: float = 1.0,
    step: float = 0.25,
    site: str = "s",
    gateway: str = "g",
) -> PlantRun:
    spec = (
        plantspec.loads(plant_text, filename="plant.yaml")
        if plant_text is not None
        else plantspec.builtin()
    )
    clock = [0.0]
    plant = Plant(spec, clock=lambda: clock[0], step=step)
    return _run(tmp_path / "config.yaml", config_text, plant, clock, period, site, gateway)


@contextlib.contextmanager
def running(tmp_path: Path, config_text: str, plant_text: str) -> Iterator[PlantRun]:
    """A run of a plant file, a 2 s poll and a 0.5 s plant step, closed however it ends."""
    run = start(tmp_path, config_text, plant_text=plant_text, period=2.0, step=0.5)
    try:
        yield run
    finally:
        run.close()


def beside(run: PlantRun, tmp_path: Path, config_text: str, *, gateway: str) -> PlantRun:
    """A second gateway on `run`'s plant and clock (give it a state_dir of its own); step
    both with run_together."""
    site = run.outbox.site
    path = tmp_path / f"{gateway}.yaml"
    return _run(path, config_text, run.plant, run.clock, run.period, site, gateway)


def _run(
    path: Path,
    config_text: str,
    plant: Plant,
    clock: list[float],
    period: float,
    site: str,
    gateway: str,
) -> PlantRun:
    path.write_text(config_text)
    config = config_module.load(path)
    config.outbox.path.parent.mkdir(parents=True, exist_ok=True)
    outbox = Outbox(config.outbox.path, max_bytes=10**9, site=site, gateway=gateway)
    gateway_ = Gateway(config, outbox)
    gateway_.pending.clear()
    return PlantRun(plant, gateway_, outbox, [d.name for d in config.devices], period, clock)
