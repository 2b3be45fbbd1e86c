"""The simulator models false hardware claims (a node group's `speed` below its
claimed GPU's) and the scheduler's measured-speed options (scenario keys
`measured_speed`, `check_hardware`): the bundled `false-claims` scenario, run with
the options and without them on the same tasks."""
from __future__ import annotations

import pytest

from sim.loop import run_scenario
from sim.scenario import ScenarioError, bundled_scenarios, load_scenario, parse_scenario


def test_measured_speed_keeps_tasks_off_nodes_that_lie_about_their_gpu():
    scenario = load_scenario(bundled_scenarios()["false-claims"])
    assert scenario.measured_speed and scenario.check_hardware
    assert [g.speed for g in scenario.nodes] == [1.0, 0.05]
    checked = run_scenario(scenario, "balanced").summary
    trusting = run_scenario(scenario.evolve(measured_speed=False, check_hardware=False),
                            "balanced").summary
    assert checked["tasks"]["submitted"] == trusting["tasks"]["submitted"]
    assert checked["tasks"]["completed"] == trusting["tasks"]["completed"]
    # trusting, the cheaper false claims get the work and take 20 times as long
    assert checked["latency"]["p95"] < trusting["latency"]["p95"] / 3
    assert checked["cost"]["total"] < trusting["cost"]["total"] / 2


def test_a_group_speed_must_be_positive():
    base = {"workload": [{"arrival": {"process": "poisson", "rate": 1.0}}]}
    with pytest.raises(ScenarioError, match=r"nodes\[0\]\.speed"):
        parse_scenario({**base, "nodes": [{"count": 1, "gpu": "RTX 4090", "speed": 0}]})
    with pytest.raises(ScenarioError, match="measured_speed"):
        parse_scenario({**base, "nodes": [{"count": 1, "gpu": "RTX 4090"}],
                        "measured_speed": "yes"})
