"""Device profiles: register maps for instrument families, named instead of typed.

A profile is a YAML file beside this module. The agent's configuration names one with
`profile:`; the simulated plant serves its meters through the same files, so the two can
never disagree about where a value lives.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfilePoint:
    name: str
    table: str
    address: int
    type: str
    order: str
    unit: str
    description: str = ""
    scale: float = 1.0  # device value = raw * scale + offset, in `unit`
    offset: float = 0.0
    bit: int | None = None  # a flag: this bit (0 = least significant) of a 16-bit register
    # A meter's own alarm flag: while it reads 1, the device's values in that reply are
    # "bad" (not totalized) or "uncertain" (totalized, and the balance's coverage drops).
    alarm: str | None = None


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    description: str
    points: tuple[ProfilePoint, ...]

    def point(self, name: str) -> ProfilePoint:
        for point in self.points:
            if point.name == name:
                return point
        raise KeyError(f"profile '{self.name}' has no point '{name}'")


def names() -> list[str]:
    files = resources.files(__name__).iterdir()
    return sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml"))


ALARM_QUALITIES = ("bad", "uncertain")


def _alarm(value: object, profile: str, point: str) -> str | None:
    if value is None or (isinstance(value, str) and value in ALARM_QUALITIES):
        return value
    raise ValueError(f"profile {profile}, point {point}: alarm is bad or uncertain, not {value!r}")


@cache
def load(name: str) -> Profile:
    """Load a shipped profile; KeyError when there is none of that name."""
    if name not in names():
        raise KeyError(name)
    text = resources.files(__name__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    points = tuple(
        ProfilePoint(
            name=p["name"],
            table=p.get("table", "holding"),
            address=int(p["address"]),
            type=p.get("type", "uint16" if "bit" in p else "float32"),
            order=p.get("order", "ABCD"),
            unit=p.get("unit", "flag"),
            description=p.get("description", ""),
            scale=float(p.get("scale", 1.0)),
            offset=float(p.get("offset", 0.0)),
            bit=int(p["bit"]) if "bit" in p else None,
            alarm=_alarm(p.get("alarm"), name, p["name"]),
        )
        for p in data["points"]
    )
    return Profile(name, data.get("description", ""), points)
