"""The agent's pipeline (Gateway: totalizer, balances, reconciliation) fed by the simulated
plant in one process on a simulated clock, so hours of plant run in seconds.

The network path (pymodbus slaves, TLS broker) is covered by the end-to-end tests; here the
plant's readings go straight into Batches and the records into the outbox, with its value
faults (bias, drift, stuck) and dropouts applied as its Modbus server would apply them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from massgate.agent import config as config_module
from massgate.agent.core.records import Record
from massgate.agent.core.samples import Batch, Quality
from massgate.agent.runtime.gateway import Gateway
from massgate.agent.store.outbox import Outbox
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

    def run_for(self, seconds: float, each: Callable[[PlantRun], None] | None = None) -> None:
        steps = round(seconds / self.period)
        pending: list[Record] = []
        saved = None
        for step in range(steps):
            self.now += self.period
            self.clock[0] = self.now
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
                self.gateway.ingest(Batch(meter, mono, wall, tagged, quality))
            self.gateway.cycle(mono, wall)
            records, totals = self.gateway.take_pending(mono)
            pending += records
            saved = totals or saved
            self.records.extend(records)
            # One commit a minute of plant time: a day of plant runs in seconds, not minutes.
            if step % 30 == 29 or step == steps - 1:
                self.outbox.put(pending, totals=saved)
                pending, saved = [], None
                if step == steps - 1:
                    self.outbox.sync()  # everything sendable, as after a stop
            if each is not None:
                each(self)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [r.body for r in self.records if r.kind == kind]

    def close(self) -> None:
        self.outbox.close()


def start(
    tmp_path: Path,
    config_text: str,
    *,
    plant_text: str | None = None,
    period: float = 1.0,
    step: float = 0.25,
) -> PlantRun:
    spec = (
        plantspec.loads(plant_text, filename="plant.yaml")
        if plant_text is not None
        else plantspec.builtin()
    )
    clock = [0.0]
    plant = Plant(spec, clock=lambda: clock[0], step=step)
    path = tmp_path / "config.yaml"
    path.write_text(config_text)
    config = config_module.load(path)
    config.outbox.path.parent.mkdir(parents=True, exist_ok=True)
    outbox = Outbox(config.outbox.path, max_bytes=10**9, site="s", gateway="g")
    gateway = Gateway(config, outbox)
    gateway.pending.clear()
    return PlantRun(plant, gateway, outbox, [d.name for d in config.devices], period, clock)
