"""`massgate batch start|end`: begin and end a node's batch by hand (or from an MES script),
through the running agent's command socket."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .. import config as config_module
from ..config import BATCH
from ..core.yamlsource import ConfigError
from .common import EXIT_BAD_CONFIG, EXIT_FAILED, EXIT_OK, login_name, print_config_error

HOW = (
    "The node's window is {batch: command} in CONFIG. The agent records who did it (--by, "
    "default the login name) in the batch's balance record and its journal, and a batch "
    "running when the agent stops goes on after its restart. Exit status 0 when the agent "
    "did it, 1 when it refused or is not running, 2 for bad input."
)


def setup(p: argparse.ArgumentParser) -> None:
    p.description = "Start or end a node's batch in the running agent. " + HOW
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    start = sub.add_parser(
        "start",
        help="start a batch on a node",
        description="Start batch --batch on --node from the agent's next cycle. " + HOW,
    )
    end = sub.add_parser(
        "end",
        help="end the batch running on a node",
        description="End the batch running on --node with the agent's next cycle: its "
        "balance is judged and recorded. " + HOW,
    )
    for q in (start, end):
        q.add_argument("config", metavar="CONFIG", help="the agent's YAML configuration file")
        q.add_argument("--node", required=True, help="the node whose batch it is")
        q.add_argument("--by", help="who does it (default: the login name)")
        q.set_defaults(func=run)
    start.add_argument("--batch", required=True, help="the batch id, like C7-012")
    start.add_argument("--campaign", help="the campaign or order it belongs to")


def run(args: argparse.Namespace) -> int:
    from ..balance.windows import check_label  # noqa: PLC0415
    from ..runtime.commandserver import command_socket, send  # noqa: PLC0415
    from ..runtime.statusserver import StatusUnavailable  # noqa: PLC0415

    prog = f"massgate batch {args.action}"
    try:
        config = config_module.load(Path(args.config))
    except ConfigError as exc:
        print_config_error(exc)
        return EXIT_BAD_CONFIG
    node = next((n for n in config.nodes if n.name == args.node), None)
    if node is None:
        known = ", ".join(n.name for n in config.nodes) or "none are configured"
        print(f"{prog}: error: no node named '{args.node}' (nodes: {known})", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if node.window_kind != BATCH or node.batch_tag is not None:
        how = f"its tag {node.batch_tag}" if node.batch_tag else f"a {node.window_kind} window"
        print(
            f"{prog}: error: node {node.name}'s windows follow {how}; batches by command "
            "need window: {batch: command}",
            file=sys.stderr,
        )
        return EXIT_BAD_CONFIG
    request: dict[str, Any] = {"command": "batch", "node": node.name, "action": args.action}
    try:
        request["by"] = check_label(args.by if args.by is not None else login_name(), "--by")
        if args.action == "start":
            request["batch"] = check_label(args.batch, "--batch")
            if args.campaign is not None:
                request["campaign"] = check_label(args.campaign, "--campaign")
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    try:
        answer = send(command_socket(config.health.socket), request)
    except StatusUnavailable as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if answer.get("ok") is True:
        print(answer.get("message", "done"))
        if answer.get("warning"):  # taken, but not (yet) on the disk
            print(f"{prog}: warning: {answer['warning']}", file=sys.stderr)
        return EXIT_OK
    print(f"{prog}: refused: {answer.get('error', 'no reason given')}", file=sys.stderr)
    return EXIT_FAILED
