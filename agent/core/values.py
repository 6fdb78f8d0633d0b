"""Converters and bounds that the agent's sections and the drivers' sections share.

A converter takes a value read from YAML and returns it checked (or raises Invalid with a
message a person can act on); see yamlsource.Section.take.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import units
from .preflight import PreflightError, password_file, readable_file
from .yamlsource import Invalid, Section, number, quantity, text

DAY = 86400.0
YEAR = 365 * DAY
MAX_POLL_INTERVAL = 3600.0  # a meter read less than hourly is not a meter the balance can use

_HOST_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def host(value: Any) -> str:
    """A host name (RFC 1123, '_' tolerated), an IPv4 address or an IPv6 address."""
    given = text(value)
    bare = given[1:-1] if given.startswith("[") and given.endswith("]") else given
    if ":" in bare:
        try:
            ipaddress.IPv6Address(bare)
        except ValueError:
            raise Invalid(f"'{given}' is not an IPv6 address") from None
        return bare
    labels = bare.removesuffix(".").split(".")
    if labels[-1].isdigit():  # no top-level domain is numeric: this is meant as an IPv4 address
        try:
            ipaddress.IPv4Address(bare)
        except ValueError:
            raise Invalid(
                f"'{given}' is not an IPv4 address (four numbers 0-255, like 192.0.2.10)"
            ) from None
        return bare
    if len(bare) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise Invalid(f"'{given}' is not a host name or IP address")
    return bare


def unit_symbol(value: Any) -> str:
    symbol = text(value)
    try:
        units.lookup(symbol)
    except units.UnitError as exc:
        raise Invalid(str(exc)) from None
    return symbol


def scale(value: Any) -> float:
    result = number(value)
    if result == 0:
        raise Invalid("a scale of 0 makes every value zero")
    return result


def tag(value: Any) -> str:
    result = text(value)
    if result.count(".") != 1 or not all(part for part in result.split(".")):
        raise Invalid(f"'{result}' is not a tag; tags are written <device>.<point>")
    return result


def tag_or(word: str, meaning: str) -> Callable[[Any], str]:
    """A tag, or `word` for what `meaning` says (a batch by command, a count by entry)."""

    def convert(value: Any) -> str:
        if value == word:
            return word
        try:
            return tag(value)
        except Invalid as exc:
            raise Invalid(f"{exc}; or '{word}' for {meaning}") from None

    return convert


def period(low: float, high: float) -> Any:
    """A time quantity between `low` and `high` seconds."""
    return quantity(units.TIME, minimum=low, maximum=high)


@dataclass(frozen=True, slots=True)
class Files:
    """How a section turns a path into a file the agent will open: relative to the
    configuration file, checked as the service user will open it (preflight)."""

    base: Path
    user: Any  # pwd.struct_passwd | None: the service user, when root checks for it

    def resolve(self, value: Any) -> Path:
        candidate = Path(text(value)).expanduser()
        return candidate if candidate.is_absolute() else self.base / candidate

    def readable(self, s: Section, key: str, path: Path | None) -> None:
        self._check(s, key, path, readable_file)

    def password(self, s: Section, key: str, path: Path | None) -> None:
        self._check(s, key, path, password_file)

    def _check(self, s: Section, key: str, path: Path | None, check: Callable[..., None]) -> None:
        """`check(path, user=...)`, its PreflightError reported at `key`."""
        if path is not None:
            try:
                check(path, user=self.user)
            except PreflightError as exc:
                s.fail(key, str(exc))
