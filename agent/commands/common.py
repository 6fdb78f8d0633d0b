"""What several commands share: exit statuses and how a bad configuration is printed."""

from __future__ import annotations

import sys

from ..core.yamlsource import ConfigError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2


def print_config_error(exc: ConfigError) -> None:
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    count = len(exc.problems)
    print(
        f"{count} problem{'s' if count != 1 else ''} found; nothing was started.", file=sys.stderr
    )


def setup_logging(verbose: bool) -> None:
    from ..runtime import journal  # noqa: PLC0415  # only the commands that log need it

    journal.setup(verbose)


def login_name() -> str:
    """Who runs the command, for the records of what an operator did (--by's default)."""
    import getpass  # noqa: PLC0415

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid without a name (a container)
        return "unknown"
