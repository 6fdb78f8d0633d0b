"""What keeps a configuration from starting, found before the running one is stopped.

A valid file can still name what this machine will not give; a reload that would fail is
refused while the old pipeline still runs, and says why in one line.
"""

from __future__ import annotations

import sqlite3
import ssl
from typing import TYPE_CHECKING

from massgate.drivers import BY_PACKAGE

from ..config import Config
from ..core import preflight
from .statelock import locks_of

if TYPE_CHECKING:  # the pipeline imports this module
    from .pipeline import Agent


class StartError(Exception):
    """The pipeline cannot be built (database, TLS, a port): one line saying what and why."""


# What building a part of the pipeline raises when the machine refuses it, not our code.
REFUSALS = (OSError, sqlite3.Error, ssl.SSLError, ValueError)


def preflight_reload(agent: Agent, new: Config) -> str | None:
    """What would stop `new` from starting, tried while the old pipeline still runs.

    A valid file can still name what this machine will not give: a database that does not
    open, a metrics port another program holds, a serial port that is not there, a state
    directory another agent holds. Each is tried here, where only what `new` changes and
    the running agent does not already hold is tried.
    """
    old = agent.config
    try:
        if agent.locks is not None:
            agent.locks.hold(locks_of(new))
        if new.mqtt is not None and any(b.tls for b in new.mqtt.brokers):
            preflight.tls_context(
                ca_file=new.mqtt.ca_file,
                client_cert=new.mqtt.client_cert,
                client_key=new.mqtt.client_key,
            )
        if new.outbox.path != old.outbox.path:
            connection = sqlite3.connect(new.outbox.path, timeout=1.0)
            try:
                connection.execute("PRAGMA schema_version").fetchone()
            finally:
                connection.close()
        if new.health.metrics is not None and new.health.metrics != old.health.metrics:
            try_bind(*new.health.metrics)
        for package in sorted({d.driver for d in new.devices}):
            problem = BY_PACKAGE[package].config().start_problem(new.devices, old.devices)
            if problem is not None:
                return str(problem)
    except REFUSALS as exc:
        return why(exc)
    except Exception as exc:  # AlreadyRunning and whatever a library raises: refuse, not die
        return str(exc) or type(exc).__name__
    return None


def try_bind(host: str, port: int) -> None:
    if (exc := preflight.bind_refused(host, port)) is not None:
        raise OSError(exc.errno, f"metrics endpoint {host}:{port}: {exc.strerror}")


def why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc) or type(exc).__name__
