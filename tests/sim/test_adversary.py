"""Adversaries and verification in the simulator (sim/adversary.py): behaviours,
the [verification] table, the `trust` report, the sampling-rate table."""
from __future__ import annotations

import math

import attrs
import pytest

from sim import ScenarioError, load_scenario, parse_scenario, run_scenario
from sim.trust_sweep import markdown, row, variants


def fleet(**verification):
    document = {
        "name": "t", "seed": 3, "duration": 300.0, "policy": ["random"],
        "nodes": [
            {"count": 6, "gpu": "RTX 4090"},
            {"count": 2, "gpu": "A100", "trusted": True},
            {"count": 2, "gpu": "RTX 4090", "behaviour": "fabricate"},
            {"count": 1, "gpu": "RTX 4090", "behaviour": "drop", "fraction": 0.5},
        ],
        "workload": [{"model": "llama2:7b", "arrival": {"process": "poisson", "rate": 4.0},
                      "output_tokens": 100}],
    }
    if verification:
        document["verification"] = verification
    return parse_scenario(document)


def test_the_tables_are_validated_naming_the_key():
    with pytest.raises(ScenarioError, match=r"nodes\[0\].behaviour"):
        parse_scenario({"nodes": [{"count": 1, "gpu": "A100", "behaviour": "lie"}],
                        "workload": [{"arrival": {"process": "poisson", "rate": 1.0}}]})
    with pytest.raises(ScenarioError, match=r"verification.mode"):
        fleet(mode="sometimes")
    with pytest.raises(ScenarioError, match=r"verification.detection.fabricate"):
        fleet(detection={"fabricate": 1.5})


def test_a_scenario_without_verification_reports_no_trust_and_draws_nothing_more():
    plain = run_scenario(fleet()).summary
    assert "trust" not in plain
    # adversary behaviours without [verification] do nothing: the run is the same
    # as with an honest fleet of the same shape
    honest = fleet()
    honest = honest.evolve(nodes=tuple(attrs.evolve(g, behaviour="", fraction=1.0)
                                       for g in honest.nodes))
    summary = run_scenario(honest).summary
    assert {k: v for k, v in summary.items() if k != "wall_seconds"} == \
        {k: v for k, v in plain.items() if k != "wall_seconds"}


def test_without_verification_every_wrong_result_is_delivered_unflagged():
    trust = run_scenario(fleet(mode="none")).summary["trust"]
    assert trust["wrong_results"] > 0
    assert trust["wrong_delivered_unflagged"] == trust["wrong_results"]
    assert trust["verified"] == 0 and trust["quarantined_adversaries"] == 0


def test_always_with_sure_detection_delivers_no_wrong_result_and_quarantines_at_once():
    summary = run_scenario(fleet(mode="always", detection={"fabricate": 1.0})).summary
    trust = summary["trust"]
    assert trust["wrong_results"] >= 2  # each fabricator produced one, at least
    assert trust["wrong_delivered_unflagged"] == 0 and trust["wrong_delivered_flagged"] == 0
    assert trust["quarantined_adversaries"] == 2  # the fabricators; a dropper is not caught
    assert trust["max_tasks_to_quarantine"] == 1  # a newcomer failing once: 1/3 < 0.5
    assert trust["false_quarantines"] == 0
    assert trust["dropped"] > 0
    # every task ended: the wrong ones completed again on honest nodes; the only
    # failures are tasks the dropper dropped on each of their 3 attempts
    tasks = summary["tasks"]
    assert tasks["completed"] + tasks["failed"] == tasks["submitted"]
    assert tasks["failed"] <= trust["dropped"] / 3
    # text is verified by one prefill pass: the kind's fraction of the work
    assert trust["overhead"] == pytest.approx(2 / 41)


def test_runs_are_deterministic():
    a = run_scenario(fleet(mode="sampled")).summary
    b = run_scenario(fleet(mode="sampled")).summary
    assert a["trust"] == b["trust"] and a["tasks"] == b["tasks"]


def test_the_bundled_adversary_scenario_and_its_rate_table():
    scenario = load_scenario("adversary").evolve(duration=300.0)
    assert scenario.verification is not None
    named = variants(scenario, [0.1])
    assert [n for n, _ in named] == ["none", "sampled 0.1", "sampled (reputation)", "always"]
    rows = [row(name, [run_scenario(v).summary["trust"]]) for name, v in named]
    by_name = {r["verification"]: r for r in rows}
    assert by_name["none"]["unflagged share"] == 1.0
    assert by_name["always"]["unflagged share"] < by_name["none"]["unflagged share"]
    assert by_name["none"]["overhead (of all work)"] == 0
    assert 0 < by_name["always"]["overhead (of all work)"] < 0.1
    assert all(r["honest quarantined"] == 0 for r in rows)
    table = markdown(rows)
    assert table.splitlines()[0].startswith("| verification |") and "always" in table
    assert not math.isnan(by_name["always"]["overhead (of all work)"])
