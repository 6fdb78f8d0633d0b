"""A YAML reader that remembers where every key came from.

Every mapping and sequence keeps its file and line (and the line of each key or item), so a
problem found later, during validation, can be reported as `site.yaml:12: devices[0].port: ...`.
Duplicate keys are refused: YAML itself would silently keep the last one, and a plant engineer
who pasted a block twice deserves to hear about it.
"""

from __future__ import annotations

import difflib
import math
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from . import units

T = TypeVar("T")


class YamlMap(dict[str, Any]):
    line: int = 0
    key_lines: dict[str, int]


class YamlSeq(list[Any]):
    line: int = 0
    item_lines: list[int]


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}: {where}{self.message}"


class ConfigError(Exception):
    """One or more problems in a configuration file, each with file, line and path."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# A configuration file is a few hundred lines; 4 MiB is far beyond any real one and keeps a
# mistaken path (a log, a disk image) from being read into memory.
MAX_FILE_BYTES = 4 * 1024 * 1024
# Real files nest five or six levels; a deeper file is a mistake or an attack, and PyYAML's
# recursive composer would end in RecursionError instead of a message.
MAX_DEPTH = 64
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Limits:
    """Composing with a depth limit, for both loaders below."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    problem=f"nested deeper than {MAX_DEPTH} levels",
                    problem_mark=self.peek_event().start_mark,  # type: ignore[attr-defined]
                )
            return super().compose_node(parent, index)  # type: ignore[misc]
        finally:
            self._depth -= 1


class _Loader(_Limits, yaml.SafeLoader):
    """PyYAML's own parser, in Python: the reference, and the words of every syntax error."""


# libyaml's scanner and parser where PyYAML has them (its wheels for x86-64 and aarch64 do):
# the Python scanner took 0.95 s of a start for a site of 1,000 points, libyaml 0.2 s. The
# nodes are still composed in Python, so the depth limit holds (libyaml's parser keeps its
# own stack, not the C stack).
CParser: Any = getattr(yaml, "cyaml", None) and getattr(yaml.cyaml, "CParser", None)

_FastLoader: Any = None  # None when PyYAML was built without libyaml
if CParser is not None:

    class _CLoader(
        _Limits,
        yaml.composer.Composer,
        CParser,  # type: ignore[misc]
        yaml.constructor.SafeConstructor,
        yaml.resolver.Resolver,
    ):
        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

    _FastLoader = _CLoader


def _merged(loader: _Loader, node: yaml.Node) -> list[YamlMap]:
    """The mappings a merge key (`<<: *defaults` or `<<: [*a, *b]`) brings in, in order."""
    sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
    result = []
    for source in sources:
        if not isinstance(source, yaml.MappingNode):
            raise yaml.MarkedYAMLError(
                problem="'<<' merges a mapping (an anchor like *defaults) or a list of them",
                problem_mark=source.start_mark,
            )
        result.append(loader.construct_object(source, deep=True))
    return result


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> YamlMap:
    result = YamlMap()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    # YAML's merge key: the keys of the merged mappings are defaults (the first one that
    # gives a key wins), and a key written in this mapping overrides them. Only keys
    # written twice in this mapping itself are duplicates.
    merged: dict[str, tuple[Any, int]] = {}
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            for source in _merged(loader, value_node):
                for key, value in source.items():
                    merged.setdefault(key, (value, source.key_lines[key]))
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            continue
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise yaml.MarkedYAMLError(
                problem=f"keys must be text, not {type(key).__name__} ({key!r})",
                problem_mark=key_node.start_mark,
            )
        if key in result:
            raise yaml.MarkedYAMLError(
                context=f"'{key}' was first given on line {result.key_lines[key]}",
                problem=f"duplicate key '{key}'",
                problem_mark=key_node.start_mark,
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    for key, (value, line) in merged.items():
        if key not in result:
            result[key] = value
            result.key_lines[key] = line
    return result


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> YamlSeq:
    result = YamlSeq(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


for _loader in (_Loader, _FastLoader):
    if _loader is not None:
        _loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
        _loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)


def _parse(text: str) -> Any:
    if _FastLoader is None:
        return yaml.load(text, Loader=_Loader)
    try:
        return yaml.load(text, Loader=_FastLoader)
    except yaml.YAMLError:
        # libyaml words its errors its own way; the Python parser's words and lines are the
        # ones this project's messages are written around. Parsing again costs only then.
        return yaml.load(text, Loader=_Loader)


def load_text(text: str, *, filename: str) -> Any:
    """Parse YAML text; a syntax error becomes a ConfigError that names file and line."""
    try:
        return _parse(text.removeprefix("\ufeff"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else 1
        message = exc.problem or "invalid YAML"
        if exc.context:
            message = f"{message} ({exc.context})"
        raise ConfigError([Problem(filename, line, "", message)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(filename, 1, "", f"invalid YAML: {exc}")]) from None
    except RecursionError:
        raise ConfigError(
            [Problem(filename, 1, "", f"nested too deeply (at most {MAX_DEPTH} levels)")]
        ) from None


def load_file(path: Path) -> Any:
    """Read and parse a configuration file: a regular file of UTF-8 text of bounded size."""
    filename = str(path)

    def refuse(message: str, line: int = 0) -> ConfigError:
        return ConfigError([Problem(filename, line, "", message)])

    try:
        # Checked before opening: opening a FIFO would block, /dev/zero never ends.
        info = path.stat()
    except FileNotFoundError:
        raise refuse("no such file") from None
    except OSError as exc:
        raise refuse(f"cannot read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise refuse("is a directory, not a configuration file")
    if not stat.S_ISREG(info.st_mode):
        raise refuse("is not a regular file (a device, FIFO or socket); name the YAML file")
    if info.st_size > MAX_FILE_BYTES:
        raise refuse(
            f"is {info.st_size} bytes; a configuration file is at most "
            f"{MAX_FILE_BYTES // (1024 * 1024)} MiB"
        )
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise refuse(f"cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise refuse(f"is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise refuse(
            f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at column {column} (save the file "
            "as UTF-8)",
            line,
        ) from None
    return load_text(text, filename=filename)


@dataclass
class Report:
    """Collects problems so that one run of `massgate check` shows all of them, not the first."""

    filename: str
    problems: list[Problem] = field(default_factory=list)

    def add(self, line: int, path: str, message: str) -> None:
        self.problems.append(Problem(self.filename, line, path, message))

    def raise_if_any(self) -> None:
        if self.problems:
            raise ConfigError(sorted(self.problems, key=lambda p: p.line))


class Invalid(Exception):
    """Raised by a converter; the section turns it into a Problem at the right line."""


class _Missing:
    pass


REQUIRED: Any = _Missing()


class Section:
    """A validated view over one YAML mapping; every key must be taken or it is an error."""

    def __init__(self, data: Any, *, path: str, report: Report, line: int) -> None:
        self.path = path
        self.report = report
        self.ok = True
        if not isinstance(data, YamlMap):
            kind = "nothing" if data is None else type(data).__name__
            report.add(line, path, f"expected a mapping of keys to values, got {kind}")
            self.data: YamlMap = YamlMap()
            self.data.key_lines = {}
            self.data.line = line
            self.ok = False
        else:
            self.data = data
        self._taken: set[str] = set()

    @property
    def line(self) -> int:
        return self.data.line

    def key_line(self, key: str) -> int:
        return self.data.key_lines.get(key, self.data.line)

    def child_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.data

    def fail(self, key: str | None, message: str) -> None:
        self.ok = False
        if key is None:
            self.report.add(self.line, self.path, message)
        else:
            self.report.add(self.key_line(key), self.child_path(key), message)

    def take(self, key: str, convert: Callable[[Any], T], default: Any = REQUIRED) -> T:
        """Convert the value of `key`; on error, record it and return `default` (or None)."""
        self._taken.add(key)
        if key not in self.data:
            if default is REQUIRED:
                self.fail(None, f"'{key}' is required")
                return None  # type: ignore[return-value]
            return default  # type: ignore[no-any-return]
        try:
            return convert(self.data[key])
        except (Invalid, ValueError) as exc:
            self.fail(key, str(exc))
            return None  # type: ignore[return-value]

    def section(self, key: str, *, required: bool = True) -> Section | None:
        self._taken.add(key)
        if key not in self.data:
            if required:
                self.fail(None, f"'{key}' is required")
            return None
        return Section(
            self.data[key], path=self.child_path(key), report=self.report, line=self.key_line(key)
        )

    def sections(self, key: str, *, required: bool = False) -> list[Section]:
        """The mappings of a list under `key`, each with its own path `key[i]`."""
        self._taken.add(key)
        if key not in self.data:
            if required:
                self.fail(None, f"'{key}' is required")
            return []
        items = self.data[key]
        if items is None:
            return []
        if not isinstance(items, YamlSeq):
            self.fail(key, "expected a list")
            return []
        return [
            Section(item, path=f"{self.child_path(key)}[{i}]", report=self.report, line=line)
            for i, (item, line) in enumerate(zip(items, items.item_lines, strict=True))
        ]

    def finish(self, extra_known: Iterable[str] = ()) -> None:
        """Every key not taken is unknown: an error with the closest known key as a hint."""
        known = self._taken | set(extra_known)
        for key in self.data:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                allowed = ", ".join(sorted(known))
                self.fail(key, f"unknown key '{key}'.{hint} (allowed here: {allowed})")


# Converters: each takes a raw YAML value and returns a typed one or raises Invalid.


def text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"expected text, got {value!r}")
    return value.strip()


# Names end up in topics, tags, journal fields and table columns. 64 characters is more than
# any plant's naming scheme needs, and keeps a topic (prefix/site/gateway/kind) far inside
# MQTT's 65,535 bytes.
MAX_NAME = 64


def name(value: Any) -> str:
    """A name used in tags and topics: letters, digits, '_' and '-', at most MAX_NAME long."""
    result = text(value)
    if len(result) > MAX_NAME:
        raise Invalid(f"a name is at most {MAX_NAME} characters; this one has {len(result)}")
    bad = sorted({c for c in result if not (c.isascii() and (c.isalnum() or c in "_-"))})
    if bad:
        raise Invalid(f"'{result}' may contain only ASCII letters, digits, '_' and '-' (not {bad})")
    return result


def integer(low: int, high: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"expected a whole number, got {value!r}")
        if not low <= value <= high:
            raise Invalid(f"{value} is out of range {low}..{high}")
        return value

    return convert


def number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"expected a number, got {value!r}")
    try:
        result = float(value)
    except OverflowError:  # an integer of hundreds of digits
        raise Invalid(f"{value} is too large") from None
    if not math.isfinite(result):
        raise Invalid(f"expected a finite number, got {value!r}")
    return result


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, got {value!r}")
    return value


def choice(*options: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if not isinstance(value, str) or value not in options:
            close = difflib.get_close_matches(str(value), options, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise Invalid(f"'{value}' is not one of {', '.join(options)}.{hint}")
        return value

    return convert


def names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (name(value),)
    if not isinstance(value, list):
        raise Invalid(f"expected a name or a list of names, got {value!r}")
    return tuple(name(v) for v in value)


def quantity(
    dimension: str,
    *,
    positive: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    """A converter for a quantity with its unit ("500ms"), into SI, within its bounds."""

    def convert(value: Any) -> float:
        try:
            result = units.parse_quantity(value, dimension)
        except units.UnitError as exc:
            raise Invalid(str(exc)) from None
        if positive and not result > 0:
            raise Invalid(f"must be greater than zero, got {value!r}")
        if minimum is not None and result < minimum:
            raise Invalid(f"must be at least {units.describe(minimum, dimension)}, got {value!r}")
        if maximum is not None and result > maximum:
            raise Invalid(f"must be at most {units.describe(maximum, dimension)}, got {value!r}")
        return result

    return convert
