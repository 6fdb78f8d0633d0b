"""Prometheus metrics on a loopback address, made from the health snapshot.

prometheus_client serves the text format from a thread of its own; the collector only reads
the latest finished snapshot, which the event loop replaces whole once a second.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger(__name__)


def _timestamp(text: str | None) -> float | None:
    return None if text is None else datetime.fromisoformat(text).timestamp()


class SnapshotCollector(Collector):
    def __init__(self, get: Callable[[], dict[str, Any]]) -> None:
        self.get = get

    def collect(self) -> Iterator[Metric]:
        snap = self.get()
        if not snap:
            return
        up = GaugeMetricFamily("massgate_device_up", "1 while it answers", labels=["device"])
        polls = CounterMetricFamily(
            "massgate_device_polls", "polls by result", labels=["device", "result"]
        )
        last_good = GaugeMetricFamily(
            "massgate_device_last_good_timestamp_seconds",
            "wall time of the last good poll",
            labels=["device"],
        )
        for name, d in snap["devices"].items():
            up.add_metric([name], 1.0 if d["up"] else 0.0)
            polls.add_metric([name, "good"], d["good_polls"])
            polls.add_metric([name, "failed"], d["failed_polls"])
            if (ts := _timestamp(d["last_good"])) is not None:
                last_good.add_metric([name], ts)
        yield from (up, polls, last_good)

        mass = CounterMetricFamily(
            "massgate_stream_mass_kg", "mass totalized", labels=["stream", "direction"]
        )
        flow = GaugeMetricFamily("massgate_stream_flow_kg_per_second", "", labels=["stream"])
        meter_alarms = CounterMetricFamily(
            "massgate_stream_meter_alarm_samples",
            "samples taken while the meter raised its own alarm flag",
            labels=["stream", "alarm"],
        )
        for name, s in snap["streams"].items():
            mass.add_metric([name, "forward"], s["forward_kg"] or 0.0)
            mass.add_metric([name, "reverse"], s["reverse_kg"] or 0.0)
            if s["flow_kg_s"] is not None:
                flow.add_metric([name], s["flow_kg_s"])
            for tag, samples in s["meter_alarms"]["samples"].items():
                meter_alarms.add_metric([name, tag], samples)
        yield from (mass, flow, meter_alarms)

        alarm = GaugeMetricFamily(
            "massgate_node_alarm_active", "1 while the balance alarm is raised", labels=["node"]
        )
        imbalance = GaugeMetricFamily(
            "massgate_node_imbalance_kg",
            "of the last window",
            labels=["node"],
        )
        tolerance = GaugeMetricFamily(
            "massgate_node_tolerance_kg", "tolerance of the last window", labels=["node"]
        )
        for name, n in snap["nodes"].items():
            alarm.add_metric([name], 1.0 if n["alarm_active"] else 0.0)
            if n["imbalance_kg"] is not None:
                imbalance.add_metric([name], n["imbalance_kg"])
            if n["tolerance_kg"] is not None:
                tolerance.add_metric([name], n["tolerance_kg"])
        yield from (alarm, imbalance, tolerance)

        box = snap["outbox"]
        yield GaugeMetricFamily("massgate_outbox_records", "records not yet sent", box["depth"])
        yield GaugeMetricFamily("massgate_outbox_bytes", "size of the records", box["bytes"])
        if box["oldest_age_s"] is not None:
            yield GaugeMetricFamily(
                "massgate_outbox_oldest_age_seconds",
                "oldest record",
                box["oldest_age_s"],
            )
        dropped = CounterMetricFamily(
            "massgate_outbox_dropped", "records dropped to keep the bound", labels=["kind"]
        )
        for kind, count in box["dropped"].items():
            dropped.add_metric([kind], count)
        yield dropped

        broker = snap["broker"]
        if broker is not None:
            yield GaugeMetricFamily(
                "massgate_broker_connected",
                "1 if connected",
                1.0 if broker["connected"] else 0.0,
            )
            yield CounterMetricFamily(
                "massgate_published_messages", "handed to the broker", broker["published"]
            )
            yield CounterMetricFamily(
                "massgate_acknowledged_messages", "PUBACKed by the broker", broker["acked"]
            )


class MetricsServer:
    def __init__(self, address: tuple[str, int], get: Callable[[], dict[str, Any]]) -> None:
        self.address = address
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SnapshotCollector(get))
        self.registry = registry
        self._server: Any = None
        self._thread: Any = None

    def start(self) -> None:
        host, port = self.address
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", host if ":" not in host else f"[{host}]", port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5.0)
            self._server = None
