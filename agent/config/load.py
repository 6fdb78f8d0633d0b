"""load(): the one YAML file, validated once into typed, frozen objects.

Nothing downstream reads raw dicts. Every problem is reported as `file:line: path: what`,
all of them in one pass, and the agent does not touch a device or a broker until the file
is clean.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..core import preflight, units
from ..core.preflight import MAX_SOCKET_PATH
from ..core.values import DAY, Files
from ..core.yamlsource import (
    Report,
    Section,
    choice,
    load_file,
    load_text,
    name,
    quantity,
)
from ..totalize.engine import ENGINES
from .crosscheck import cross_check
from .devices import DeviceParsers
from .health import check_socket, loopback_address
from .model import (
    DEFAULT_DRAIN_RATE,
    DEFAULT_OUTBOX_BYTES,
    MAX_RETENTION,
    STATUS_SOCKET,
    Config,
    GatewayConfig,
    HealthConfig,
    OutboxConfig,
)
from .nodes import parse_node, parse_reconciliation
from .plant import parse_inventory, parse_manual_stream, parse_stream, with_rollover
from .uplink import parse_mqtt, parse_outbox


def load(path: Path) -> Config:
    """Read and validate a configuration file. Raises ConfigError listing every problem."""
    return _build(load_file(path), path)


def loads(text_: str, *, path: Path) -> Config:
    """Validate configuration text as if it were the file at `path` (tests, SIGHUP checks)."""
    return _build(load_text(text_, filename=str(path)), path)


def _build(raw: Any, path: Path) -> Config:
    report = Report(str(path))
    root = Section(raw, path="", report=report, line=1)
    base = path.resolve().parent
    user = preflight.service_user(path)
    files = Files(base=base, user=user)
    resolve = files.resolve  # paths relative to the configuration file
    gateway = parse_gateway(root.section("gateway"), resolve, user)
    parsers = DeviceParsers(root, files)
    devices = tuple(parsers.device(s) for s in root.sections("devices", required=True))
    streams = tuple(parse_stream(s) for s in root.sections("streams"))
    manual_streams = tuple(parse_manual_stream(s) for s in root.sections("manual_streams"))
    inventories = tuple(parse_inventory(s) for s in root.sections("inventories"))
    nodes = tuple(parse_node(s) for s in root.sections("nodes"))

    totals_interval = 60.0
    hourly_retention = 90 * 86400.0
    engine = "numba"
    if (totals := root.section("totals", required=False)) is not None:
        totals_interval = totals.take(
            "interval", quantity(units.TIME, minimum=1.0, maximum=DAY), 60.0
        )
        hourly_retention = totals.take(
            "hourly_retention",
            quantity(units.TIME, minimum=3600.0, maximum=MAX_RETENTION),
            hourly_retention,
        )
        engine = totals.take("engine", choice(*ENGINES), engine)
        totals.finish()
    balance_retention = 90 * 86400.0
    reconciliation = None
    if (balance := root.section("balance", required=False)) is not None:
        balance_retention = balance.take(
            "retention",
            quantity(units.TIME, minimum=3600.0, maximum=MAX_RETENTION),
            balance_retention,
        )
        if (rec := balance.section("reconciliation", required=False)) is not None:
            reconciliation = parse_reconciliation(rec)
        balance.finish()
    telemetry_interval = 10.0
    if (telemetry := root.section("telemetry", required=False)) is not None:
        telemetry_interval = telemetry.take(
            "interval", quantity(units.TIME, minimum=0.0, maximum=DAY), 10.0
        )
        telemetry.finish()

    state_dir = gateway.state_dir if gateway is not None else base
    outbox = OutboxConfig(
        path=state_dir / "state.sqlite",
        max_bytes=DEFAULT_OUTBOX_BYTES,
        drain_rate=DEFAULT_DRAIN_RATE,
    )
    if (outbox_section := root.section("outbox", required=False)) is not None:
        outbox = parse_outbox(outbox_section, state_dir, resolve, user)

    health = HealthConfig(socket=state_dir / STATUS_SOCKET)
    if (health_section := root.section("health", required=False)) is not None:
        health = HealthConfig(
            socket=health_section.take("socket", resolve, health.socket),
            metrics=health_section.take("metrics", loopback_address, None),
        )
        if health_section.has("socket"):
            check_socket(health_section, health.socket, user)
        health_section.finish()
    elif gateway is not None and len(os.fsencode(health.socket)) > MAX_SOCKET_PATH:
        root.fail(
            "gateway",
            f"the status socket {health.socket} would be longer than {MAX_SOCKET_PATH} bytes; "
            "use a shorter state_dir or set health.socket",
        )

    mqtt = None
    if (mqtt_section := root.section("mqtt", required=False)) is not None:
        default_id = f"massgate-{gateway.site}-{gateway.id}" if gateway else "massgate"
        mqtt = parse_mqtt(mqtt_section, resolve, default_id, user)
    # Top-level keys starting with "x-" hold YAML anchors for `<<: *name` (a template for
    # twenty similar meters); like docker-compose's extension fields, they are not read.
    root.finish(extra_known=[key for key in root.data if key.startswith("x-")])
    report.raise_if_any()

    config = Config(
        source=path,
        gateway=gateway,  # type: ignore[arg-type]  # checked by raise_if_any
        devices=devices,
        streams=streams,  # type: ignore[arg-type]
        inventories=inventories,  # type: ignore[arg-type]
        nodes=nodes,  # type: ignore[arg-type]
        totals_interval=totals_interval,
        hourly_retention=hourly_retention,
        engine=engine,
        balance_retention=balance_retention,
        reconciliation=reconciliation,
        manual_streams=manual_streams,  # type: ignore[arg-type]
        telemetry_interval=telemetry_interval,
        outbox=outbox,
        mqtt=mqtt,
        health=health,
    )
    cross_check(config, root, report, parsers)
    report.raise_if_any()
    return replace(
        config, streams=tuple(with_rollover(stream, config) for stream in config.streams)
    )


def parse_gateway(s: Section | None, resolve: Any, user: Any) -> GatewayConfig | None:
    if s is None:
        return None
    result = GatewayConfig(
        site=s.take("site", name),
        id=s.take("id", name),
        state_dir=s.take("state_dir", resolve),
    )
    if result.state_dir is not None:
        try:
            preflight.writable_dir(result.state_dir, user=user)
        except preflight.PreflightError as exc:
            s.fail("state_dir", str(exc))
    s.finish()
    return result if s.ok else None
