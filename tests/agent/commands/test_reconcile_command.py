"""`massgate reconcile` on files, as a plant engineer runs it on a historian export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from massgate.agent.commands.cli import main

CASES = Path(__file__).parents[2] / "examples" / "reconcile"
NET = str(CASES / "heat_exchanger.yaml")
DATA = str(CASES / "heat_exchanger.csv")


def test_table_shows_the_books_reconciled_flows_and_names_the_biased_meter(capsys):
    status = main(["reconcile", "--network", NET, "--data", DATA])
    out = capsys.readouterr().out
    # A row fails the global test: exit 1, so a script can tell.
    assert status == 1
    book = out.split("\n\n")[0]
    assert "passed" in book
    for flow in ("100.2200", "64.5000", "35.7200"):
        assert flow in book
    biased = out.split("\n\n")[1]
    assert "FAILED" in biased
    assert "gross error 1: the meter on F2 reads 6 high" in biased
    assert "← suspect" in biased.splitlines()[3]  # the F2 row
    assert "observable" in out.split("\n\n")[2]


def test_json_has_every_row_with_tests_and_intervals(capsys):
    main(["reconcile", "--network", NET, "--data", DATA, "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert [r["row"] for r in rows] == ["book", "F2 reads 6 high", "F2 and F4 not measured"]
    book = {s["stream"]: s for s in rows[0]["streams"]}
    assert round(book["F1"]["reconciled"], 2) == 100.22
    assert book["F1"]["interval"] == pytest.approx(1.96 / 3**0.5, rel=1e-3)
    assert rows[0]["global_test"]["dof"] == 4
    assert rows[1]["gross_errors"][0] | {"size": round(rows[1]["gross_errors"][0]["size"], 9)} == {
        "kind": "bias",
        "where": "F2",
        "size": 6.0,
        "statistic": pytest.approx(24.0),
        "indistinguishable_from": [],
    }
    assert rows[2]["streams"][1]["measured"] is None
    assert rows[2]["streams"][1]["class"] == "observable"


@pytest.mark.parametrize("estimator", ["huber", "fair"])
def test_a_robust_estimate_keeps_the_good_meters_nearer_the_truth(estimator, capsys):
    """The example's second row: F2 reads 6 high (true flows 100, 64, 36). WLS pulls F1 to
    101 and F3 to 35; the robust estimate stays nearer, and says what it is."""
    main(["reconcile", "--network", NET, "--data", DATA, "--json", "--estimator", estimator])
    rows = json.loads(capsys.readouterr().out)
    biased = rows[1]
    wls = {s["stream"]: s["reconciled"] for s in biased["streams"]}
    robust = biased["robust"]
    assert (robust["estimator"], robust["converged"]) == (estimator, True)
    for name, true in (("F1", 100.0), ("F3", 36.0), ("F4", 64.0)):
        assert abs(robust["streams"][name] - true) < abs(wls[name] - true), name
    main(["reconcile", "--network", NET, "--data", DATA, "--estimator", estimator])
    assert f"{estimator} estimate, each gross error's pull bounded:" in capsys.readouterr().out


def test_without_an_estimator_there_is_no_robust_estimate(capsys):
    main(["reconcile", "--network", NET, "--data", DATA, "--json"])
    assert all("robust" not in row for row in json.loads(capsys.readouterr().out))


def test_accuracy_is_relative_and_taken_as_two_sigma(tmp_path: Path, capsys):
    net = tmp_path / "n.yaml"
    net.write_text(
        "nodes: [pipe]\n"
        "streams:\n"
        "  - {name: a, to: pipe, accuracy: 2 %}\n"
        "  - {name: b, from: pipe, accuracy: 2 %}\n"
    )
    data = tmp_path / "d.csv"
    data.write_text("a,b\n100,100\n")
    assert main(["reconcile", "--network", str(net), "--data", str(data), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["streams"][0]["sigma"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("network", "data", "expected"),
    [
        (
            "nodes: [a]\nstreams:\n  - {name: x, to: b, sigma: 1}\n",
            "x\n1\n",
            "n.yaml:3: streams[0].to: no node named 'b' in 'nodes'",
        ),
        (
            "nodes: [a]\nstreams:\n  - {name: x, sigma: 1}\n",
            "x\n1\n",
            "n.yaml:3: streams[0]: a stream needs 'from', 'to' or both",
        ),
        (
            "nodes: [a]\nstreams:\n  - {name: x, to: a, sigma: 1, accuracy: 1 %}\n",
            "x\n1\n",
            "give 'sigma' or 'accuracy', not both",
        ),
        (
            "nodes: [a]\nstreams:\n  - {name: x, to: a, sigma: 1, sigmaa: 2}\n",
            "x\n1\n",
            "unknown key 'sigmaa'. Did you mean 'sigma'?",
        ),
        ("nodes: [a]\nstreams:\n  - {name: x, to: a, sigma: 1}\n", "x,y\n1,2\n", "'y'"),
        ("nodes: [a]\nstreams:\n  - {name: x, to: a, sigma: 1}\n", "x\n1\nfoo\n", "d.csv:3: x:"),
        ("nodes: [a]\nstreams:\n  - {name: x, to: a, sigma: 1}\n", "x\n1,2\n", "d.csv:2:"),
        ("nodes: [a]\nstreams:\n  - {name: x, to: a, sigma: 1}\n", "", "the file is empty"),
        ("nodes: [a]\nstreams:\n  - {name: x, to: a, sigma: 1}\n", "x\n", "no data rows"),
        ("nodes: [a\n", "x\n1\n", "n.yaml:"),
    ],
)
def test_bad_files_are_reported_with_file_and_line(
    tmp_path: Path, capsys, network: str, data: str, expected: str
):
    net = tmp_path / "n.yaml"
    net.write_text(network)
    csv = tmp_path / "d.csv"
    csv.write_text(data)
    assert main(["reconcile", "--network", str(net), "--data", str(csv)]) == 2
    err = capsys.readouterr().err
    assert expected in err, err


def test_missing_file_is_a_clear_error(tmp_path: Path, capsys):
    assert main(["reconcile", "--network", NET, "--data", str(tmp_path / "none.csv")]) == 2
    assert "none.csv:0: cannot read" in capsys.readouterr().err


def test_detectability_needs_no_data_and_names_what_cannot_be_told_apart(capsys):
    from massgate.agent.balance import reconcile as rc

    assert main(["reconcile", "--network", NET, "--detectability"]) == 0
    out = capsys.readouterr().out
    assert "|z| > 2.800 (alpha 0.05 over 10 tests" in out
    assert "F1                  4.998  leak at splitter" in out
    assert "exchanger           4.081" in out
    assert main(["reconcile", "--network", NET, "--detectability", "--json", "--no-leaks",
                 "--power", "0.5", "--alpha", "0.1"]) == 0  # fmt: skip
    document = json.loads(capsys.readouterr().out)
    assert document["nodes"] == []
    first = document["meters"][0]
    assert first["where"] == "F1"
    assert first["sigma"] == 1
    assert first["cannot_be_told_from"] == []  # no leak to confuse it with
    from massgate.agent.commands.reconcile import load_network

    network = load_network(Path(NET)).network
    ones = {f"F{i}": 1.0 for i in range(1, 7)}
    (library, *_) = rc.detectability(network, ones, alpha=0.1, power=0.5, leaks=False)
    assert first["smallest"] == pytest.approx(library.smallest, rel=1e-12)
    assert document["test_z"] == pytest.approx(rc.sidak_z(0.1, 6))


def test_detectability_takes_relative_accuracies_at_their_nominal_flows(tmp_path: Path, capsys):
    net = tmp_path / "n.yaml"
    net.write_text(
        "nodes: [tank]\nstreams:\n"
        "  - {name: feed, to: tank, accuracy: 0.2 %, nominal: 120}\n"
        "  - {name: out1, from: tank, accuracy: 0.5 %, nominal: 70}\n"
        "  - {name: out2, from: tank, accuracy: 0.5 %}\n"
    )
    assert main(["reconcile", "--network", str(net), "--detectability", "--json"]) == 2
    assert (
        "massgate reconcile: error: stream out2 is given by its relative accuracy: give its "
        "usual flow as 'nominal' in the network, or --data" in capsys.readouterr().err
    )
    data = tmp_path / "d.csv"
    data.write_text("feed,out1,out2\n119,71,49\n121,69,51\n")
    assert main(["reconcile", "--network", str(net), "--detectability", "--json",
                 "--data", str(data)]) == 0  # fmt: skip
    meters = {m["where"]: m for m in json.loads(capsys.readouterr().out)["meters"]}
    assert meters["feed"]["sigma"] == pytest.approx(0.001 * 120)  # nominal, not the data
    assert meters["out2"]["sigma"] == pytest.approx(0.0025 * 50)  # the data's mean
    assert meters["out1"]["relative"] == pytest.approx(meters["out1"]["smallest"] / 70)


def test_without_detectability_the_data_is_required(capsys):
    assert main(["reconcile", "--network", NET]) == 2
    assert "massgate reconcile: error: --data is required (unless --detectability)" in (
        capsys.readouterr().err
    )


def test_correlated_meters_in_the_network_file(tmp_path: Path, capsys):
    net = tmp_path / "n.yaml"
    text = Path(NET).read_text() + "correlations:\n  - {streams: [F2, F4], correlation: 0.8}\n"
    net.write_text(text)
    intervals = {}
    for network in (NET, str(net)):
        assert main(["reconcile", "--network", network, "--data", DATA, "--json"]) == 1
        book = json.loads(capsys.readouterr().out)[0]
        intervals[network] = {s["stream"]: s["interval"] for s in book["streams"]}["F2"]
    # A shared error is known less well than two independent ones: a wider interval.
    assert intervals[str(net)] == pytest.approx(intervals[NET] * 0.6882 / 0.5774, rel=1e-3)
    for old, new, message in (
        ("correlation: 0.8}", "correlation: 1.0}", "a correlation lies strictly between -1 and 1"),
        ("[F2, F4]", "[F2, F2]", "a stream's error is correlated with another stream's"),
        ("[F2, F4]", "[F2, F9]", "'F9' is no measured stream of this network"),
    ):
        net.write_text(text.replace(old, new))
        assert main(["reconcile", "--network", str(net), "--data", DATA]) == 2
        assert message in capsys.readouterr().err
    net.write_text(text)
    assert main(["reconcile", "--network", str(net), "--data", DATA, "--estimator", "huber"]) == 2
    assert "the robust estimators take independent errors" in capsys.readouterr().err
