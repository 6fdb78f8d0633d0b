"""`massgate check`: validate a configuration without touching any device or broker."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import config as config_module
from ..core.yamlsource import ConfigError
from .common import EXIT_BAD_CONFIG, EXIT_OK, print_config_error


def setup(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Validate CONFIG and print every problem as file:line: path: message. "
        "Exits 0 when the file is valid, 2 when it is not."
    )
    p.add_argument("config", metavar="CONFIG", help="the YAML configuration file")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        config = config_module.load(Path(args.config))
    except ConfigError as exc:
        print_config_error(exc)
        return EXIT_BAD_CONFIG
    points = sum(len(d.points) for d in config.devices)
    brokers = ", ".join(str(b) for b in config.mqtt.brokers) if config.mqtt else "none"
    print(
        f"{args.config}: OK: {len(config.devices)} devices ({points} points), "
        f"{len(config.streams)} streams"
        + (f" (+{len(config.manual_streams)} manual)" if config.manual_streams else "")
        + f", {len(config.inventories)} inventories, "
        f"{len(config.nodes)} nodes; brokers: {brokers}; state in {config.gateway.state_dir}"
    )
    if config.mqtt is not None and config.mqtt.commands:
        from ..core.records import command_topics  # noqa: PLC0415

        request, answer = command_topics(
            config.mqtt.topic_prefix, config.gateway.site, config.gateway.id
        )
        print(
            f"  commands taken from the broker: {', '.join(config.mqtt.commands)} on {request} "
            f"(answers on {answer}); the broker's ACL decides who may write there"
        )
    return EXIT_OK
