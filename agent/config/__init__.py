"""The configuration: one YAML file, validated once into typed, frozen objects.

load.py reads the file and builds a Config from its sections: model.py (the objects and the
bounds), plant.py (streams, inventories, density), nodes.py (nodes, reconciliation),
uplink.py (outbox, mqtt), health.py, devices.py (handed to the drivers) and crosscheck.py
(what no single section shows). This package's names are what the rest of the agent uses.
"""

from __future__ import annotations

from ..core.yamlsource import ConfigError
from .load import load, loads
from .model import (
    BATCH,
    CALENDAR,
    DEFAULT_DRAIN_RATE,
    LOSS_CLASSES,
    OUTPUT_CLASSES,
    PRODUCT,
    ROLLING,
    STATUS_SOCKET,
    BrokerEndpoint,
    Config,
    DensityModel,
    GatewayConfig,
    HealthConfig,
    InventoryConfig,
    ManualStreamConfig,
    MqttConfig,
    NodeConfig,
    NodeCycle,
    NodeTerms,
    OutboxConfig,
    ReconciliationConfig,
    StreamConfig,
    ZeroCheckConfig,
)
from .nodes import node_terms

__all__ = [
    "BATCH",
    "CALENDAR",
    "DEFAULT_DRAIN_RATE",
    "LOSS_CLASSES",
    "OUTPUT_CLASSES",
    "PRODUCT",
    "ROLLING",
    "STATUS_SOCKET",
    "BrokerEndpoint",
    "Config",
    "ConfigError",
    "DensityModel",
    "GatewayConfig",
    "HealthConfig",
    "InventoryConfig",
    "ManualStreamConfig",
    "MqttConfig",
    "NodeConfig",
    "NodeCycle",
    "NodeTerms",
    "OutboxConfig",
    "ReconciliationConfig",
    "StreamConfig",
    "ZeroCheckConfig",
    "load",
    "loads",
    "node_terms",
]
