"""`massgate status` as a person reads it: the meter alarms a stream's samples were taken
under, and a stream's dry kilograms."""

from __future__ import annotations

from massgate.agent.commands.status import render


def test_a_streams_meter_alarms_are_counted_and_the_active_one_is_marked():
    stream = {"forward_kg": 1200.0, "reverse_kg": 0.0, "net_kg": 1200.0, "flow_kg_s": 2.0}
    snap = {
        "site": "s", "gateway": "g", "pid": 1, "uptime_s": 60.0, "config": "c.yaml",
        "broker": None, "devices": {}, "nodes": {}, "alarms_active": [],
        "outbox": {"depth": 0, "bytes": 0, "oldest_age_s": None, "dropped": {},
                   "held_in_memory": 0},
        "streams": {
            "feed": {**stream, "meter_alarms": {
                "active": ["ft101.empty_pipe"],
                "samples": {"ft101.drive_gain_high": 12, "ft101.empty_pipe": 3}}},
            "product": {**stream, "meter_alarms": {"active": [], "samples": {}},
                        "dry_net_kg": 1104.0},
        },
    }  # fmt: skip
    text = render(snap)
    assert "meter alarm ft101.drive_gain_high: 12 samples\n" in text
    assert "meter alarm ft101.empty_pipe: 3 samples, ACTIVE" in text
    assert text.count("meter alarm") == 2
    assert "flow 2.000 kg/s, dry net 1 104.0 kg" in text
    assert text.count("dry net") == 1


def test_commands_from_the_broker_say_whether_the_broker_took_the_subscription():
    commands = {
        "topic": "massgate/s/g/command/request", "allowed": ["enter"], "subscribed": False,
        "broker_refusal": "Not authorized", "taken": 2, "refused": 1,
    }  # fmt: skip
    broker = {
        "connected": True, "broker": "mqtts://b:8883", "last_publish": None, "published": 3,
        "acked": 3, "last_error": None, "commands": commands,
    }  # fmt: skip
    snap = {
        "site": "s", "gateway": "g", "pid": 1, "uptime_s": 60.0, "config": "c.yaml",
        "broker": broker, "devices": {}, "nodes": {}, "alarms_active": [], "streams": {},
        "outbox": {"depth": 0, "bytes": 0, "oldest_age_s": None, "dropped": {},
                   "held_in_memory": 0},
    }  # fmt: skip
    assert (
        "  commands from the broker (enter) on massgate/s/g/command/request: NOT TAKEN: the "
        "broker refused the subscription (Not authorized); 2 carried out, 1 refused\n"
    ) in render(snap)
    commands.update(subscribed=True, broker_refusal=None)
    assert "command/request: taken; 2 carried out" in render(snap)
