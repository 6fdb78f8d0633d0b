"""Work in progress counted, not weighed: a counter of bags filled from the feed, times the
mass of one bag, is the inventory of a bagging node."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from massgate.agent import config as config_module
from massgate.agent.core.yamlsource import ConfigError
from tests.agent.balance import plantrun
from tests.agent.balance.test_balance_plant import DEVICES, PLANT

PLC = (
    "  - {name: plc, protocol: modbus_tcp, host: 127.0.0.1, port: 5030, "
    "points: [{name: bags, address: 0, type: uint32, unit: count}]}\n"
)
CONFIG = DEVICES.replace("streams:\n", PLC + "streams:\n", 1).replace(
    "inventories:\n",
    "inventories:\n  - {name: bags, count: plc.bags, unit_mass: 25 kg, accuracy: 0.2 kg}\n",
) + (
    "nodes:\n"
    "  - {name: bagging, inputs: [feed_a], inventories: [bags], window: 10 min,\n"
    "     tolerance: {fixed: 25 kg, relative: 0.5 %}, persistence: 0s}\n"
)


def test_a_count_of_bags_times_their_mass_balances_the_feed(tmp_path: Path):
    """The feed fills 25 kg bags; the PLC counts them. Every window: Δinventory is the feed
    less what waits in the open bag (less than one bag)."""
    with plantrun.running(tmp_path, CONFIG, PLANT) as run:
        run.plc["bags"] = 0

        def count(r: plantrun.PlantRun) -> None:
            r.plc["bags"] = math.floor(r.plant.truth().lines["feed"] / 25.0)

        run.run_for(3600, count)
    windows = [b for b in run.of("balance") if b["node"] == "bagging"]
    assert len(windows) > 50
    judged = [w for w in windows if w["status"] != "inconclusive"]
    assert len(judged) > 40
    assert {w["status"] for w in judged} == {"ok"}
    for w in judged:
        assert w["delta_inventory_kg"] % 25 == pytest.approx(0, abs=1e-6) or w[
            "delta_inventory_kg"
        ] % 25 == pytest.approx(25, abs=1e-6)
        assert abs(w["imbalance_kg"]) <= 25 + 0.005 * w["in_kg"]
    gauge = run.gateway.inventories["bags"]
    counted = gauge.level  # the count of the last poll
    assert counted in (run.plc["bags"], run.plc["bags"] - 1)
    assert gauge.mass == 25.0 * counted
    # Some 280 bags: √n units of 0.1 kg standard uncertainty each.
    assert gauge.sigma == pytest.approx(math.sqrt(counted) * 0.1)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("count: plc.bags, unit_mass: 25 kg,", "count: plc.bags,", "give both"),
        ("unit_mass: 25 kg", "unit_mass: 25 m", "a mass is expected"),
        ("count: plc.bags,", "count: plc.bags, mass: wt100.net_weight,", "not 2"),
        ("count: plc.bags,", "count: ft101.mass_flow,", "but a dimensionless is needed"),
        ("count: plc.bags,", "count: entyr,", "or 'entry' for a count entered by massgate enter"),
    ],
)
def test_wip_configuration_errors(tmp_path: Path, old: str, new: str, message: str):
    assert old in CONFIG
    with pytest.raises(ConfigError) as err:
        config_module.loads(CONFIG.replace(old, new), path=tmp_path / "c.yaml")
    assert message in str(err.value)
    assert len(err.value.problems) == 1, err.value.problems  # a misspelt tag is one problem
