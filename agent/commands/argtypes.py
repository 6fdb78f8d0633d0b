"""Command-line values checked where argparse reads them, so a bad one is one line, exit 2.

argparse names the type function in its message when a converter raises ValueError
("invalid _unit_range value"); every converter here raises ArgumentTypeError with what is
wrong and what is allowed instead.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn

MAX_SECONDS = 7 * 86400.0  # no command waits or runs longer than a week


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: what is wrong, and where help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def whole(low: int, high: int, *, what: str, note: str = "") -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if not low <= value <= high:
            more = f"; {note}" if note else ""
            raise argparse.ArgumentTypeError(f"{value} is not a {what} ({low}-{high}{more})")
        return value

    convert.__name__ = what
    return convert


def seconds(*, low: float, high: float = MAX_SECONDS, zero: bool = False) -> Callable[[str], float]:
    """Seconds within [low, high] (low itself excluded unless `zero`)."""

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
        if not math.isfinite(value) or value > high or value < low or (value == low and not zero):
            bound = f"{'at least' if zero else 'more than'} {low:g}"
            raise argparse.ArgumentTypeError(f"{text} s: give {bound} and at most {high:g}")
        return value

    return convert


def rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text}: give a finite number, 0 or more")
    return value


tcp_port = whole(1, 65535, what="TCP port")
listen_port = whole(0, 65535, what="TCP port", note="0: any free port")
register = whole(0, 65535, what="register address")
unit_id = whole(0, 255, what="unit id")
baudrate = whole(300, 4_000_000, what="baud rate")
