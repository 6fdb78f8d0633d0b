"""The first telemetry record carries the first values: it goes when every device has
answered (or failed) once, not an interval later and never empty; a silent device holds it
up one interval at most."""

from __future__ import annotations

from pathlib import Path

from massgate.agent import config as config_module
from massgate.agent.core.samples import Batch, Quality
from massgate.agent.runtime.gateway import Gateway
from massgate.agent.store.outbox import Outbox

CONFIG = """\
gateway: {{site: a, id: b, state_dir: {state}}}
devices:
  - {{name: tt1, protocol: modbus_tcp, host: 127.0.0.1, port: 5020, profile: temperature_tx}}
  - {{name: pt1, protocol: modbus_tcp, host: 127.0.0.1, port: 5021, profile: pressure_tx}}
telemetry: {{interval: 10s}}
"""


def _gateway(tmp_path: Path) -> Gateway:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(state=tmp_path))
    config = config_module.load(path)
    return Gateway(config, Outbox(":memory:", max_bytes=1 << 20, site="a", gateway="b"))


def _telemetry(gateway: Gateway, mono: float) -> list[dict[str, object]]:
    gateway.cycle(mono, 1.8e9 + mono)
    found = [r.body for r in gateway.pending if r.kind == "telemetry"]
    gateway.pending.clear()
    return found


def _batch(device: str, mono: float, quality: Quality = Quality.GOOD) -> Batch:
    tag = "tt1.temperature" if device == "tt1" else "pt1.pressure"
    return Batch(device, mono, 1.8e9 + mono, {tag: 300.0}, quality)


def test_the_first_telemetry_goes_with_the_first_answer_of_every_device(tmp_path: Path):
    gateway = _gateway(tmp_path)
    assert _telemetry(gateway, 0.0) == [], "no empty record before any poll"
    gateway.ingest(_batch("tt1", 0.2))
    assert _telemetry(gateway, 0.25) == [], "one device of two has answered"
    gateway.ingest(_batch("pt1", 0.4, Quality.BAD))  # a failed poll is an answer too
    (first,) = _telemetry(gateway, 0.5)
    assert set(first["points"]) == {"tt1.temperature", "pt1.pressure"}  # type: ignore[arg-type]
    assert gateway.sync_now, "the first values wait for no timed sync of the outbox"
    gateway.sync_now = False  # as the processing cycle does once it has synced
    assert _telemetry(gateway, 5.0) == []
    assert len(_telemetry(gateway, 10.5)) == 1, "then every interval"
    assert not gateway.sync_now, "later telemetry rides on the next sync"


def test_a_silent_device_holds_the_first_telemetry_up_one_interval_at_most(tmp_path: Path):
    gateway = _gateway(tmp_path)
    assert _telemetry(gateway, 0.0) == []
    gateway.ingest(_batch("tt1", 0.2))
    assert _telemetry(gateway, 9.9) == []
    (first,) = _telemetry(gateway, 10.0)
    assert set(first["points"]) == {"tt1.temperature"}  # type: ignore[arg-type]
