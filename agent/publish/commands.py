"""Commands from the broker (`mqtt.commands`): requests on the command topic, checked and
handed to the gateway like the command socket's, answered on the answer topic.

Subscribe only, and off unless the file names the commands: the agent opens no port, and
who may write on <prefix>/<site>/<gateway>/command/request is for the broker's ACL to
decide. What arrives there is checked like a device's reply. A request is bounded in size,
parsed, and carries an id; the answer names that id, because MQTT 3.1.1 has no correlation
data. Only the commands the file names are carried out. A retained request is refused: it
would be delivered again at every connection. More than RATE a second are refused, not
queued behind the pipeline. None of them reaches a device.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from ..balance.windows import check_label
from ..core import units
from ..core.records import parse_utc
from ..core.requests import Committed, Handler, parse_request

log = logging.getLogger(__name__)

RATE = 5.0  # commands a second, on average...
BURST = 50  # ...after a burst of this many (an MES sending a shift's tickets at once)
LOG_EVERY = 60.0  # s: at most one line about refused commands this often
# Fields of an entry that may come with their unit or as ISO 8601 times (what an MES or a
# form sends), as well as in kg and epoch seconds (what `massgate enter` sends).
MASSES = {"quantity": "kg", "uncertainty": "uncertainty_kg"}
TIMES = ("time", "from", "to")


@dataclass
class Commands:
    """The command topic's side of the agent: what it takes, and what became of it."""

    allowed: tuple[str, ...]
    handle: Handler | None = None  # the gateway's; None while a reload is between two
    committed: Committed | None = None  # the gateway's: what an answer waits for
    taken: int = 0
    refused: int = 0
    subscribed: bool | None = None  # None: not yet answered on this connection
    broker_refusal: str | None = None  # the broker's reason when it refused the subscription
    _tokens: float = BURST
    _tokens_at: float = -math.inf
    _said_at: float = -math.inf
    _unsaid: int = 0

    def answer(self, payload: bytes, retained: bool, now: float) -> dict[str, Any]:
        """What to answer to `payload` (`now` is monotonic); the request is carried out by
        the handler when everything about it is in order."""
        key: str | None = None
        try:
            request = parse_request(payload)
            if isinstance(request.get("id"), str):
                key = request["id"].strip() or None
            if retained:
                raise ValueError(
                    "a retained request is not carried out (the broker would hand it over "
                    "again at every connection); publish commands with retain false, and "
                    "clear this one by publishing an empty retained message"
                )
            key = check_label(request.get("id"), "id")
            command = request.get("command")
            if command not in self.allowed:
                raise ValueError(
                    f"command {command!r} is not taken from the broker (mqtt.commands: "
                    f"{', '.join(self.allowed)})"
                )
            if not self._token(now):
                raise ValueError(
                    f"more than {BURST} commands at once or {RATE:g} a second: not carried "
                    "out; send it again later"
                )
            if self.handle is None:
                raise ValueError("the agent is reloading its configuration; send it again")
            answer = self.handle({**with_units(request), "via": "mqtt"})
        except ValueError as exc:
            answer = {"ok": False, "error": str(exc)}
        except Exception:  # a bug must not end the agent's link, nor leave a sender waiting
            log.exception("command from the broker failed (id %s)", key)
            answer = {
                "ok": False,
                "error": "the agent failed to carry out the command (see its journal)",
            }
        if answer.get("ok") is True:
            self.taken += 1
        else:
            self.refused += 1
            self._say(key, str(answer.get("error")), now)
        return {"id": key, **answer}

    def _token(self, now: float) -> bool:
        self._tokens = min(BURST, self._tokens + (now - self._tokens_at) * RATE)
        self._tokens_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _say(self, key: str | None, error: str, now: float) -> None:
        # A sender that keeps sending bad requests gets its answers; the journal gets a line
        # a minute, with a count.
        if now - self._said_at < LOG_EVERY:
            self._unsaid += 1
            return
        more = f" ({self._unsaid} more refused since the last line)" if self._unsaid else ""
        log.warning("command from the broker refused (id %s): %s%s", key, error, more)
        self._said_at, self._unsaid = now, 0

    def summary(self, topic: str) -> dict[str, Any]:
        return {
            "topic": topic,
            "allowed": list(self.allowed),
            "subscribed": self.subscribed,
            "broker_refusal": self.broker_refusal,
            "taken": self.taken,
            "refused": self.refused,
        }


def with_units(request: dict[str, Any]) -> dict[str, Any]:
    """An entry's quantities with their units ("12.34 t") in kg, its ISO 8601 times in epoch
    seconds. Raises ValueError saying which field is wrong."""
    result = dict(request)
    for key, kg in MASSES.items():
        if key not in result:
            continue
        if kg in result:
            raise ValueError(f"give {key} (with its unit) or {kg}, not both")
        value = result.pop(key)
        if not isinstance(value, str):
            raise ValueError(f'{key}: a quantity with its unit, like "12.34 t", got {value!r}')
        try:
            result[kg] = units.parse_quantity(value, units.MASS)
        except units.UnitError as exc:
            raise ValueError(f"{key}: {exc}") from None
    for key in TIMES:
        if isinstance(result.get(key), str):
            try:
                result[key] = parse_utc(result[key])
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
    return result
