"""The probation limit (engine/core/verification.py) in a scenario's [verification]
table: `probation_tasks` (0: no limit) and `limit_score` reach the TrustPolicy."""
from __future__ import annotations

import pytest

from sim import ScenarioError, parse_scenario, run_scenario


def fleet(**verification):
    return parse_scenario({
        "name": "t", "seed": 5, "duration": 300.0, "policy": ["balanced"],
        "nodes": [
            {"count": 6, "gpu": "RTX 4090"},
            {"count": 2, "gpu": "A100", "trusted": True},
            {"count": 3, "gpu": "RTX 4090", "slots": 8, "behaviour": "fabricate"},
        ],
        "workload": [{"model": "llama2:7b", "arrival": {"process": "poisson", "rate": 6.0},
                      "output_tokens": 100}],
        "verification": {"mode": "always", "detection": {"fabricate": 1.0}, **verification},
    })


def test_probation_tasks_reaches_the_trust_policy_and_zero_turns_it_off():
    assert fleet().verification.policy.probation_tasks == 2  # TrustPolicy's default
    assert fleet(probation_tasks=3, limit_score=0.8).verification.policy.probation_tasks == 3
    assert fleet(probation_tasks=3, limit_score=0.8).verification.policy.limit_score == 0.8
    assert fleet(probation_tasks=0).verification.policy.probation_tasks is None
    with pytest.raises(ScenarioError, match=r"verification.probation_tasks"):
        fleet(probation_tasks=-1)


def test_with_a_limit_of_one_a_fabricator_spoils_one_run_before_its_quarantine():
    trust = run_scenario(fleet(probation_tasks=1)).summary["trust"]
    assert trust["quarantined_adversaries"] == 3
    assert trust["max_tasks_to_quarantine"] == 1 and trust["wrong_results"] == 3
    assert trust["false_quarantines"] == 0
