"""massgate: the one entry point (check, run, sim, demo, probe, scan)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from ..core.yamlsource import ConfigError
from . import argtypes

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2

log = logging.getLogger("massgate")


def _setup_logging(verbose: bool) -> None:
    from ..runtime import journal

    journal.setup(verbose)


def _print_config_error(exc: ConfigError) -> None:
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    count = len(exc.problems)
    print(
        f"{count} problem{'s' if count != 1 else ''} found; nothing was started.", file=sys.stderr
    )


def cmd_check(args: argparse.Namespace) -> int:
    from .. import config as config_module

    try:
        config = config_module.load(Path(args.config))
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_BAD_CONFIG
    points = sum(len(d.points) for d in config.devices)
    brokers = ", ".join(str(b) for b in config.mqtt.brokers) if config.mqtt else "none"
    print(
        f"{args.config}: OK: {len(config.devices)} devices ({points} points), "
        f"{len(config.streams)} streams, {len(config.inventories)} inventories, "
        f"{len(config.nodes)} nodes; brokers: {brokers}; state in {config.gateway.state_dir}"
    )
    return EXIT_OK


def _check_numba_cache() -> None:
    """Say so when numba cannot keep its compiled kernels: every start would compile them."""
    cache = os.environ.get("NUMBA_CACHE_DIR")
    if not cache:
        return
    try:
        Path(cache).mkdir(parents=True, exist_ok=True)
        probe = Path(cache) / f".massgate-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        log.warning(
            "NUMBA_CACHE_DIR %s is not writable (%s): the totalizer's kernels are compiled at "
            "every start, which takes seconds on a Raspberry Pi",
            cache,
            exc.strerror or exc,
        )


def cmd_run(args: argparse.Namespace) -> int:
    from .. import config as config_module
    from ..runtime.statelock import AlreadyRunning, StateLocks

    path = Path(args.config)
    try:
        config = config_module.load(path)
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_BAD_CONFIG
    _setup_logging(args.verbose)
    # Before anything else is opened, and held until the process ends, reloads included.
    locks = StateLocks()
    from ..runtime.pipeline import locks_of

    try:
        locks.hold(locks_of(config))
    except (AlreadyRunning, OSError) as exc:
        log.error("cannot run: %s", exc)
        return EXIT_FAILED
    _check_numba_cache()
    import time

    from ..runtime.pipeline import Carried, StartError, run
    from ..runtime.sdnotify import Notifier

    started = time.time()

    async def main() -> None:
        shutdown = asyncio.Event()
        reload = asyncio.Event()
        loop = asyncio.get_running_loop()
        # Signal handlers belong to the real entry point only; tests inject `shutdown`.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, shutdown.set)
        loop.add_signal_handler(signal.SIGHUP, reload.set)
        notifier = Notifier()
        carried = Carried()
        previous: config_module.Config | None = None
        refused: str | None = None
        try:
            current: config_module.Config | None = config
            while current is not None:
                try:
                    following = await run(
                        current,
                        shutdown=shutdown,
                        reload=reload,
                        load=lambda: config_module.load(path),
                        notifier=notifier,
                        started=started,
                        carried=carried,
                        locks=locks,
                        refused=refused,
                    )
                except (StartError, AlreadyRunning) as exc:
                    if previous is None:
                        raise
                    # A reloaded file that passed every check and still could not start: the
                    # configuration that ran before runs again, and says why.
                    refused = f"the reloaded configuration could not start: {exc}"
                    log.error("reload refused: %s; back to the configuration loaded before", exc)
                    current, previous = previous, None
                    continue
                previous, refused = current, None
                current = following
        finally:
            notifier.close()

    try:
        asyncio.run(main())
    except (StartError, AlreadyRunning, OSError) as exc:
        log.error("cannot run: %s", exc)
        return EXIT_FAILED
    except BaseExceptionGroup as group:
        # One line per cause for the journal; the tracebacks only with -v.
        for cause in _leaves(group):
            log.error("cannot run: %s: %s", type(cause).__name__, cause)
        log.debug("what ended the agent", exc_info=group)
        return EXIT_FAILED
    finally:
        locks.release()
    return EXIT_OK


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found


def cmd_sim(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    from . import sim as simcmd

    return simcmd.run(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    try:
        return asyncio.run(run_demo(args))
    except KeyboardInterrupt:
        return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argtypes.Parser(
        prog="massgate",
        description=(
            "Edge gateway for mass balance: reads meters over Modbus, totalizes kilograms, "
            "checks that mass is conserved, and publishes every result over MQTT/TLS."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    # Sub-parsers are of the parser's own class (one-line errors); typed as the base class
    # that the command modules take.
    sub: argparse._SubParsersAction[argparse.ArgumentParser] = parser.add_subparsers(  # type: ignore[assignment]
        dest="command", required=True, metavar="COMMAND"
    )

    p = sub.add_parser(
        "check",
        help="validate a configuration file without touching any device or broker",
        description="Validate CONFIG and print every problem as file:line: path: message. "
        "Exits 0 when the file is valid, 2 when it is not.",
    )
    p.add_argument("config", metavar="CONFIG", help="the YAML configuration file")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "run",
        help="run the agent until SIGTERM or Ctrl-C",
        description="Poll the devices of CONFIG, totalize, check balances and publish. "
        "On SIGTERM/SIGINT polling stops, totals are saved and the outbox is flushed.",
    )
    p.add_argument("config", metavar="CONFIG", help="the YAML configuration file")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "sim",
        help="serve a simulated plant over Modbus TCP, Modbus RTU and OPC UA",
        description="Serve the built-in plant (tank T-100 on load cells with a Coriolis meter "
        "on its feed, radar and hydrostatic level; a magnetic meter, temperature and pressure "
        "transmitters on its product line) or a plant file of your own until Ctrl-C or "
        "SIGTERM: every meter as a Modbus TCP slave, and on request as RTU slaves on a serial "
        "line and over OPC UA. Prints an agent configuration that reads them all.",
    )
    from . import sim as simcmd

    simcmd.add_arguments(p)
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser(
        "demo",
        help="run the simulated plant and the agent together, with a live table",
        description="Start the simulated plant and the agent in one process, show flows, "
        "totals, inventory, the balance and the outbox live, open a leak part-way so the "
        "alarm is seen to raise, and stop after --duration or Ctrl-C. Without --broker the "
        "records stay in the outbox, where you can see them pile up.",
    )
    p.add_argument(
        "--duration",
        type=argtypes.seconds(low=0.0),
        default=60.0,
        help="seconds to run (default %(default)s)",
    )
    p.add_argument(
        "--leak-at",
        type=argtypes.seconds(low=0.0, zero=True),
        metavar="SECONDS",
        help="when the leak opens (default: 40%% of the duration)",
    )
    p.add_argument(
        "--leak-rate",
        type=argtypes.rate,
        default=0.5,
        metavar="KG_PER_S",
        help="(default %(default)s)",
    )
    p.add_argument("--broker", metavar="URL", help="publish to this broker, e.g. mqtts://host:8883")
    p.add_argument("--ca", metavar="FILE", help="CA certificate that signed the broker's")
    p.add_argument("--client-cert", metavar="FILE", help="client certificate for mutual TLS")
    p.add_argument("--client-key", metavar="FILE", help="key of the client certificate")
    p.add_argument(
        "--state-dir", metavar="DIR", help="where to keep the outbox (default: a temporary dir)"
    )
    p.add_argument(
        "--plain", action="store_true", help="print the table as plain text instead of redrawing"
    )
    p.set_defaults(func=cmd_demo)

    from ..bench import drivers as bench
    from . import reconcile as reconcilecmd
    from . import report, sitetools
    from . import status as statuscmd

    statuscmd.add_command(sub)
    sitetools.add_commands(sub)
    bench.add_commands(sub)
    reconcilecmd.add_command(sub)
    report.add_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        sys.stdout.flush()
    except (BrokenPipeError, BaseExceptionGroup) as exc:
        # The reader went away (`massgate demo --plain | head`): what it did not read is not
        # an error of ours. From inside the agent's task group it comes wrapped in a group.
        if isinstance(exc, BaseExceptionGroup) and exc.split(BrokenPipeError)[1] is not None:
            raise
        # Python would complain again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    return result


if __name__ == "__main__":
    sys.exit(main())
