"""Reconciliation while the agent runs, with a robust estimator and with correlated meters:
the built-in tank with a second feed meter (a magmeter, FT-103) and the network's
reconciliation every minute over 10 min (MAGMETER_CONFIG)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from massgate.agent import config as config_module
from massgate.agent.core.yamlsource import ConfigError
from massgate.drivers.sim.faults import Fault
from tests.agent.balance import plantrun
from tests.agent.balance.test_balance_plant import MAGMETER_CONFIG, MAGMETER_PLANT, _t
from tests.agent.publish.test_payload_schemas import problems

HOUR = 3600.0
RECONCILE = "  reconciliation: {window: 10 min, every: 1 min, confirm: 3}\n"
assert RECONCILE in MAGMETER_CONFIG


def _run(tmp_path: Path, reconcile: str, bias: float = 0.0) -> list[dict]:
    config = MAGMETER_CONFIG.replace(RECONCILE, reconcile)
    tmp_path.mkdir(exist_ok=True)
    run = plantrun.start(tmp_path, config, plant_text=MAGMETER_PLANT, period=2.0, step=0.5)
    if bias:
        run.plant.faults.add(Fault(kind="bias", target="ft103", start=0.25 * HOUR,
                                   magnitude=bias))  # fmt: skip
    try:
        run.run_for(HOUR)
        published = [json.loads(m.payload) for m in run.outbox.take(10**6)]
    finally:
        run.close()
    return [p for p in published if p["kind"] == "reconciliation"]


def _streams(part: list[dict], key: str = "reconciled_kg") -> dict[str, float]:
    return {s["stream"]: s[key] for s in part}


def test_a_robust_estimate_leaves_the_good_meters_where_they_read(tmp_path: Path):
    """FT-103 reads 3 % high. Least squares spreads its error over the feed meter and the
    tank's; Huber's estimate keeps them near their readings and puts FT-103 near the truth."""
    reconcile = "  reconciliation: {window: 10 min, every: 1 min, confirm: 3, estimator: huber}\n"
    records = _run(tmp_path, reconcile, bias=0.03)
    after = [r for r in records if _t(r["window_start"]) >= 0.25 * HOUR]
    assert len(after) >= 30
    for r in after:
        assert problems("reconciliation", r) == []
        measured = _streams(r["streams"], "measured_kg")
        wls = _streams(r["streams"])
        robust = _streams(r["robust"]["streams"])
        assert r["robust"]["estimator"] == "huber"
        assert r["robust"]["converged"] is True
        truth = measured["feed_a"]  # a Coriolis meter rated 0.1 %
        # Least squares pulls FT-101's reading by a share of the 3 % error ...
        wls_pull = abs(wls["feed_a"] - truth) / truth
        robust_pull = abs(robust["feed_a"] - truth) / truth
        assert wls_pull > 2 * robust_pull
        # ... Huber's estimate keeps it, and says what FT-103 should have read.
        assert robust_pull < 0.002
        assert robust["feed_b"] == pytest.approx(truth, rel=0.004)
        assert measured["feed_b"] == pytest.approx(truth * 1.03, rel=0.01)


def test_correlated_meters_change_the_weights_online(tmp_path: Path):
    plain = _run(tmp_path / "a", RECONCILE)
    told = _run(
        tmp_path / "b",
        "  reconciliation:\n    window: 10 min\n    every: 1 min\n"
        "    correlations: [{streams: [feed_b, product], correlation: 0.8}]\n",
    )
    assert len(plain) == len(told) > 40
    # The same data (the plant is seeded); the product and FT-103 now share an error, so the
    # intervals and adjustments differ, and no gross error is found in either.
    last_plain, last_told = (
        _streams(plain[-1]["streams"], "interval_kg"),
        _streams(told[-1]["streams"], "interval_kg"),
    )
    assert last_plain["feed_b"] != pytest.approx(last_told["feed_b"], rel=1e-3)
    assert not any(r["gross_errors"] for r in told)


@pytest.mark.parametrize(
    ("reconcile", "message"),
    [
        (
            "  reconciliation:\n    estimator: fair\n"
            "    correlations: [{streams: [feed_b, product], correlation: 0.8}]\n",
            "the robust estimators take independent errors",
        ),
        (
            "  reconciliation:\n"
            "    correlations: [{streams: [feed_b, prodcut], correlation: 0.5}]\n",
            "'prodcut' is no metered stream of the reconciled nodes",
        ),
        (
            "  reconciliation:\n    correlations: [{streams: [feed_b, product], correlation: 1}]\n",
            "a correlation lies strictly between -1 and 1",
        ),
        ("  reconciliation: {estimator: tukey}\n", "tukey"),
    ],
)
def test_online_reconciliation_configuration_errors(tmp_path: Path, reconcile: str, message: str):
    with pytest.raises(ConfigError) as err:
        config_module.loads(MAGMETER_CONFIG.replace(RECONCILE, reconcile), path=tmp_path / "c.yaml")
    assert message in str(err.value)
