"""What an OPC UA device is, once its configuration has been validated (no I/O here)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

# The current OPC UA security policies (Basic256Sha256 is the one most servers offer; the
# two Aes policies are its successors, required by newer servers and profiles).
POLICIES = ("None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")
MODES = ("Sign", "SignAndEncrypt")


@dataclass(frozen=True, slots=True, kw_only=True)
class UaPoint:
    """One variable node. SI value = value * factor + offset."""

    tag: str
    node_id: str  # "ns=2;s=FT201.MassFlow"
    unit: str
    factor: float
    offset: float

    @property
    def rollover(self) -> float:
        """A variable is read as a number, taken not to wrap."""
        return math.inf


@dataclass(frozen=True, slots=True, kw_only=True)
class UaSecurity:
    policy: str  # one of POLICIES
    mode: str | None  # "Sign" or "SignAndEncrypt"; None with policy None
    certificate: Path | None  # the gateway's application certificate (DER or PEM)
    private_key: Path | None
    server_certificate: Path | None  # None: taken from the server's endpoint list


@dataclass(frozen=True, slots=True, kw_only=True)
class OpcUaDevice:
    name: str
    url: str
    points: tuple[UaPoint, ...]
    mode: str = "subscribe"  # or "poll"
    publishing_interval: float = 0.5  # s
    sampling_interval: float = 0.25  # s
    queue_size: int = 10
    deadband: float | None = None  # absolute, in the node's own unit
    poll_interval: float = 1.0  # s, mode "poll"
    timeout: float = 4.0  # s, per request
    security: UaSecurity = UaSecurity(
        policy="None", mode=None, certificate=None, private_key=None, server_certificate=None
    )
    username: str | None = None
    password_file: Path | None = None
    reconnect_max: float = 30.0  # s, cap of the reconnect backoff

    @property
    def driver(self) -> str:
        return "opcua"

    @property
    def endpoint(self) -> str:
        return self.url
