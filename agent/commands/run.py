"""`massgate run`: the agent, until SIGTERM or Ctrl-C; SIGHUP reloads its configuration."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import time
from pathlib import Path

from .. import config as config_module
from ..core.yamlsource import ConfigError
from ..runtime.pipeline import Carried, run
from ..runtime.refusal import StartError
from ..runtime.sdnotify import Notifier
from ..runtime.statelock import AlreadyRunning, StateLocks, locks_of
from .common import EXIT_BAD_CONFIG, EXIT_FAILED, EXIT_OK, print_config_error, setup_logging

log = logging.getLogger("massgate")


def setup(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Poll the devices of CONFIG, totalize, check balances and publish. "
        "On SIGTERM/SIGINT polling stops, totals are saved and the outbox is flushed."
    )
    p.add_argument("config", metavar="CONFIG", help="the YAML configuration file")
    p.set_defaults(func=main)


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


def main(args: argparse.Namespace) -> int:
    path = Path(args.config)
    try:
        config = config_module.load(path)
    except ConfigError as exc:
        print_config_error(exc)
        return EXIT_BAD_CONFIG
    setup_logging(args.verbose)
    # Before anything else is opened, and held until the process ends, reloads included.
    locks = StateLocks()
    try:
        locks.hold(locks_of(config))
    except (AlreadyRunning, OSError) as exc:
        log.error("cannot run: %s", exc)
        return EXIT_FAILED
    if config.engine == "numba" and (config.streams or config.inventories):
        _check_numba_cache()
    started = time.time()

    async def serve() -> None:
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
        asyncio.run(serve())
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
