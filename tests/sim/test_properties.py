"""Properties of any small scenario: tasks are conserved, Little's law holds, runs are
pure functions of (scenario, seed)."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim import parse_scenario, run_scenario
from tests.strategies import sim_scenarios


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sim_scenarios, st.integers(0, 2**16))
def test_any_scenario_conserves_tasks_obeys_little_and_repeats(document, seed):
    scenario = parse_scenario(document)
    first = run_scenario(scenario, seed=seed).summary
    tasks = first["tasks"]
    assert tasks["submitted"] == (tasks["completed"] + tasks["failed"] + tasks["expired"]
                                  + tasks["unfinished"])
    assert tasks["unfinished"] == 0  # no drain limit: every task ends
    little = first["little"]
    assert abs(little["L"] - little["lambda"] * little["W"]) <= 1e-9 * max(1.0, little["L"])
    assert 0.0 <= first["utilization"]["overall"] <= 1.0 + 1e-9
    again = run_scenario(scenario, seed=seed).summary
    first.pop("wall_seconds"), again.pop("wall_seconds")
    assert repr(first) == repr(again)
