"""Shared fixtures: a real Mosquitto with TLS on a free loopback port, and leak guards."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from massgate.agent.bench.localbroker import (
    LOOPBACK,
    BrokerUnavailable,
    Mosquitto,
    free_port,  # noqa: F401  # the tests take it from here
)
from massgate.agent.bench.pki import Pki, make_pki, make_ua_certificate
from massgate.agent.config import BrokerEndpoint, MqttConfig


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """asyncio.run, failing the test when the coroutine leaves tasks behind."""

    async def guarded() -> Any:
        result = await coro
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not leftover, f"tasks leaked: {leftover}"
        return result

    return asyncio.run(guarded())


def mqtt_config(
    *ports: int, ca: Path | None, in_flight: int = 20, username: str | None = None, **extra: Any
) -> MqttConfig:
    return MqttConfig(
        brokers=tuple(BrokerEndpoint(host=LOOPBACK, port=p, tls=True) for p in ports),
        ca_file=ca,
        client_cert=None,
        client_key=None,
        protocol=extra.pop("protocol", "5"),
        keepalive=10.0,
        topic_prefix="massgate",
        in_flight=in_flight,
        username=username,
        password_file=extra.pop("password_file", None),
        password_env=extra.pop("password_env", None),
        client_id="massgate-test",
        status_interval=extra.pop("status_interval", 60.0),
    )


def until(condition: Callable[[], bool], limit: float = 60.0) -> bool:
    """Whether `condition()` holds within `limit` seconds, looked at every 50 ms.

    For what has no event to wait on: another process's log, a row count in PostgreSQL.
    """
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


async def until_async(condition: Callable[[], bool], limit: float = 60.0) -> bool:
    """`until` inside an event loop that must go on serving (simulated slaves): the condition
    is looked at in a thread, every 100 ms, within `limit` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if await asyncio.to_thread(condition):
            return True
        await asyncio.sleep(0.1)
    return await asyncio.to_thread(condition)


def publish_until(publisher: Any, done: Any, *, limit: float = 20.0) -> None:
    """Run a Publisher until `done()` (checked every 50 ms, at most `limit` seconds), then
    stop it and wait for it to finish."""

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(publisher.run(stop))
        for _ in range(int(limit / 0.05)):
            if done():
                break
            await asyncio.sleep(0.05)
        stop.set()
        await task

    run_async(main())


class Broker(Mosquitto):
    """The shared launcher (agent/bench/localbroker.py); a broker that cannot start fails
    the test with Mosquitto's own words."""

    def start(self) -> None:
        try:
            super().start()
        except BrokerUnavailable as exc:
            pytest.fail(str(exc))


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker(pki: Pki, tmp_path: Path) -> Iterator[Broker]:
    b = Broker(pki, tmp_path, pki.server_cert, pki.server_key)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def stranger_broker(pki: Pki, tmp_path: Path) -> Iterator[Broker]:
    """A broker whose certificate comes from a CA the gateway does not trust."""
    b = Broker(pki, tmp_path, pki.other_server_cert, pki.other_server_key)
    b.start()
    yield b
    b.stop()


@dataclass
class Subscriber:
    """A test client that records every message under a topic filter."""

    broker: Broker
    topic: str = "massgate/#"
    durable: bool = False  # a persistent session, so nothing is missed while it reconnects
    messages: list[tuple[str, dict[str, Any], bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.durable:
            self.client = mqtt.Client(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=f"durable-subscriber-{self.broker.port}",
                protocol=mqtt.MQTTv311,
                clean_session=False,
            )
        else:
            self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.client.reconnect_delay_set(0.1, 0.5)
        context = ssl.create_default_context(cafile=str(self.broker.pki.ca))
        self.client.tls_set_context(context)
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(self.topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_message = self._on_message

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((message.topic, json.loads(message.payload), message.retain))

    def start(self) -> None:
        self.client.connect(LOOPBACK, self.broker.port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "subscriber got no SUBACK"

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def records(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [m for t, m, _ in self.messages if t.endswith("/" + kind)]

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return bool(predicate())


@pytest.fixture
def subscriber(broker: Broker) -> Iterator[Subscriber]:
    s = Subscriber(broker)
    s.start()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves threads running (pymodbus's conftest does the same)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked:
            return
        time.sleep(0.05)
    pytest.fail(f"threads leaked: {[t.name for t in leaked]}")


@pytest.fixture(scope="session")
def ua_certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed OPC UA server certificate and a client one."""
    base = tmp_path_factory.mktemp("ua-pki")
    host = socket.gethostname()
    paths = {
        "server_cert": base / "server.der",
        "server_key": base / "server.pem",
        "client_cert": base / "client.der",
        "client_key": base / "client.pem",
    }
    make_ua_certificate(
        paths["server_cert"],
        paths["server_key"],
        uri="urn:massgate:sim",
        host=host,
        common_name="massgate sim",
        server=True,
    )
    make_ua_certificate(
        paths["client_cert"],
        paths["client_key"],
        uri="urn:massgate:test-gateway",
        host=host,
        common_name="massgate gateway",
        server=False,
    )
    return paths


class NotifySocket:
    """systemd's end of the notify socket: every datagram the agent sent, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def wait(
        self, predicate: Callable[[dict[str, str]], bool], timeout: float = 30.0
    ) -> dict[str, str]:
        """The first message, from now on, that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                data = self.sock.recv(65536).decode()
            except TimeoutError:
                break
            message = dict(line.split("=", 1) for line in data.splitlines())
            self.messages.append(message)
            if predicate(message):
                return message
        raise AssertionError(f"no such notify message within {timeout} s: {self.messages[-5:]}")

    def close(self) -> None:
        self.sock.close()


def start_agent(
    config: Path, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`massgate run CONFIG` in a process of its own, its output appended to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "massgate.agent.commands.cli", "run", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
