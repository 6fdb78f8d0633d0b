"""The virtual serial cable: handed over only once socat has made both ends raw."""

from __future__ import annotations

import os
import termios

from massgate.drivers.sim.ptypair import PtyPair


def test_both_ends_are_raw_without_echo_when_handed_over(monkeypatch):
    """socat makes each link before it sets its pty raw: checked the moment both links were
    there, one end still echoed 5 times in 400. A client that wrote then read its own
    request back: a silent RTU line that seemed to answer. The wait is made a busy one here,
    so that a pair is handed over the moment it looks ready."""
    from massgate.drivers.sim import ptypair

    monkeypatch.setattr(ptypair.time, "sleep", lambda seconds: None)
    for _ in range(200):
        with PtyPair() as ends:
            for end in ends:
                fd = os.open(end, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
                try:
                    lflag = termios.tcgetattr(fd)[3]
                finally:
                    os.close(fd)
                assert not lflag & (termios.ECHO | termios.ICANON), end
