"""The way out: the `outbox` (bound, drain rate, maximum ages) and `mqtt` (brokers, TLS,
credentials, topics) sections."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..core import preflight, units, values
from ..core.values import DAY
from ..core.yamlsource import (
    Invalid,
    Section,
    YamlSeq,
    boolean,
    choice,
    integer,
    number,
    quantity,
    text,
)
from .model import (
    COMMANDS,
    DEFAULT_DRAIN_RATE,
    DEFAULT_OUTBOX_BYTES,
    MAX_CLIENT_ID,
    MAX_DRAIN_RATE,
    MAX_KEEPALIVE,
    MAX_OUTBOX_BYTES,
    MAX_RETENTION,
    MAX_TOPIC_PREFIX,
    BrokerEndpoint,
    MqttConfig,
    OutboxConfig,
)


def parse_outbox(s: Section, state_dir: Path, resolve: Any, user: Any) -> OutboxConfig:
    path = s.take("path", resolve, state_dir / "state.sqlite")
    if s.has("path") and path is not None:
        try:
            if os.path.isdir(path):
                raise preflight.PreflightError(f"{path} is a directory; name the database file")
            preflight.writable_dir(path.parent, user=user)
        except preflight.PreflightError as exc:
            s.fail("path", str(exc))
    max_bytes = s.take(
        "max_size",
        quantity(units.BYTES, minimum=1e5, maximum=MAX_OUTBOX_BYTES),
        DEFAULT_OUTBOX_BYTES,
    )
    drain_rate = s.take("drain_rate", number, DEFAULT_DRAIN_RATE)
    if drain_rate is not None and not 0 <= drain_rate <= MAX_DRAIN_RATE:
        s.fail(
            "drain_rate",
            f"a rate in messages per second up to {MAX_DRAIN_RATE:g}, or 0 for no limit",
        )
    max_age: dict[str, float] = {}
    if (ages := s.section("max_age", required=False)) is not None:
        for priority in ("telemetry", "totals", "balance", "alarm"):
            age = ages.take(
                priority, quantity(units.TIME, positive=True, maximum=MAX_RETENTION), None
            )
            if age is not None:
                max_age[priority] = age
        ages.finish()
        if not ages.ok:
            s.ok = False
    s.finish()
    return OutboxConfig(
        path=path, max_bytes=int(max_bytes or 0), drain_rate=drain_rate or 0.0, max_age=max_age
    )


def _broker(value: Any) -> BrokerEndpoint:
    url = urlsplit(text(value))
    if url.scheme not in ("mqtts", "mqtt") or not url.hostname:
        raise Invalid(f"'{value}' is not a broker URL like mqtts://broker.example.com:8883")
    try:
        port = url.port
    except ValueError:
        raise Invalid(f"'{value}' has an invalid port") from None
    if port == 0:
        raise Invalid(f"'{value}' has an invalid port (1-65535)")
    host = values.host(url.hostname)
    tls = url.scheme == "mqtts"
    return BrokerEndpoint(host=host, port=port or (8883 if tls else 1883), tls=tls)


def _topic_prefix(value: Any) -> str:
    prefix = text(value)
    if len(prefix) > MAX_TOPIC_PREFIX:
        raise Invalid(f"a topic prefix is at most {MAX_TOPIC_PREFIX} characters")
    if any(c in prefix for c in "+#\x00") or prefix.startswith("/") or prefix.endswith("/"):
        raise Invalid(
            f"'{prefix}' is not a topic prefix: no '+', '#' (wildcards), and no '/' at either end"
        )
    if "//" in prefix:
        raise Invalid(f"'{prefix}' has an empty topic level ('//')")
    return prefix


def _client_id(value: Any) -> str:
    client_id = text(value)
    if len(client_id) > MAX_CLIENT_ID:
        raise Invalid(
            f"a client id is at most {MAX_CLIENT_ID} characters; this one has {len(client_id)}"
        )
    if not client_id.isascii() or not client_id.isprintable() or " " in client_id:
        raise Invalid(f"'{client_id}' may contain only printable ASCII without spaces")
    return client_id


def env_name(value: Any) -> str:
    result = text(value)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", result):
        raise Invalid(f"'{result}' is not the name of an environment variable")
    return result


def _commands(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise Invalid(
            f"expected a list of the commands taken from the broker, like [enter] "
            f"({', '.join(COMMANDS)}; [] for none), got {value!r}"
        )
    return tuple(dict.fromkeys(choice(*COMMANDS)(v) for v in value))


def parse_mqtt(
    s: Section, resolve: Any, default_client_id: str, user: Any, *, commands: bool = True
) -> MqttConfig:
    """The `mqtt` section; `commands`: whether it may take commands (the agent's may, the
    ingest's may not)."""
    brokers: tuple[BrokerEndpoint, ...] = ()
    raw_brokers = s.take("brokers", lambda v: v)
    if isinstance(raw_brokers, YamlSeq) and raw_brokers:
        collected = []
        for i, item in enumerate(raw_brokers):
            try:
                collected.append(_broker(item))
            except Invalid as exc:
                s.report.add(raw_brokers.item_lines[i], f"{s.child_path('brokers')}[{i}]", str(exc))
                s.ok = False
        brokers = tuple(collected)
    elif raw_brokers is not None:
        s.fail("brokers", "expected a list of broker URLs, e.g. [mqtts://broker:8883]")
    allow_plaintext = s.take("allow_plaintext", boolean, False)
    if any(not b.tls for b in brokers) and not allow_plaintext:
        s.fail(
            "brokers",
            "an mqtt:// (plaintext) broker sends readings unencrypted; use mqtts:// "
            "or set 'allow_plaintext: true' if you really mean it",
        )
    result = MqttConfig(
        brokers=brokers,
        ca_file=s.take("ca_file", resolve, None),
        client_cert=s.take("client_cert", resolve, None),
        client_key=s.take("client_key", resolve, None),
        protocol=s.take("protocol", choice("5", "3.1.1"), "5"),
        keepalive=s.take(
            "keepalive", quantity(units.TIME, minimum=5.0, maximum=MAX_KEEPALIVE), 30.0
        ),
        topic_prefix=s.take("topic_prefix", _topic_prefix, "massgate"),
        in_flight=s.take("in_flight", integer(1, 65535), 20),
        username=s.take("username", text, None),
        password_file=s.take("password_file", resolve, None),
        password_env=s.take("password_env", env_name, None),
        client_id=s.take("client_id", _client_id, default_client_id),
        status_interval=s.take(
            "status_interval", quantity(units.TIME, minimum=1.0, maximum=DAY), 60.0
        ),
        commands=(s.take("commands", _commands, ()) or ()) if commands else (),
    )
    if not s.has("client_id") and len(default_client_id) > MAX_CLIENT_ID:
        s.fail(
            None,
            f"the client id made from site and gateway id ({len(default_client_id)} characters) "
            f"is longer than {MAX_CLIENT_ID}; set 'client_id'",
        )
    if any(b.tls for b in result.brokers) or result.client_cert or result.client_key:
        for key, message in preflight.tls_problems(
            ca_file=result.ca_file,
            client_cert=result.client_cert,
            client_key=result.client_key,
            user=user,
        ):
            s.fail(key, message)
    if result.password_file is not None:
        try:
            preflight.password_file(result.password_file, user=user)
        except preflight.PreflightError as exc:
            s.fail("password_file", str(exc))
    if (result.client_cert is None) != (result.client_key is None):
        s.fail("client_cert", "give both 'client_cert' and 'client_key', or neither")
    if result.password_file is not None and result.password_env is not None:
        s.fail("password_env", "give the password by 'password_file' or 'password_env', not both")
    if (result.password_file or result.password_env) and result.username is None:
        s.fail("username", "a password needs a 'username'")
    s.finish()
    return result
