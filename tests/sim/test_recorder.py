"""The statistics recorder on its own: counts, Little's law, busy time, the window."""
from __future__ import annotations

import math

import pytest

from engine.core import Priority, TaskFinished, TaskSpec, TaskSubmitted, Usage, openai_cost
from sim import parse_scenario
from sim.fleet import SimNode, SimTask, build_fleet, gpu_names
from sim.recorder import StatsRecorder

SCENARIO = parse_scenario({
    "name": "two nodes", "duration": 10.0,
    "nodes": [{"count": 1, "gpu": "RTX 4090"}, {"count": 1, "gpu": "A100", "slots": 2}],
    "workload": [{"arrival": {"process": "poisson", "rate": 1.0}}],
})


def recorder(warmup: float = 0.0, duration: float = 10.0) -> StatsRecorder:
    nodes = build_fleet(SCENARIO, 1)
    return StatsRecorder(warmup, duration, gpu_names(SCENARIO),
                         [n.gpu_index for n in nodes], [int(Priority.STANDARD)])


def submit(stats: StatsRecorder, task_id: str, now: float, warmup: float = 0.0,
           duration: float = 10.0, priority: Priority = Priority.STANDARD) -> SimTask:
    spec = TaskSpec(task_id, "llama2:7b", priority, 100, 50)
    stats.record_event(TaskSubmitted(spec), now)
    return SimTask(spec, now, 1.0, -1.0, 1.0, warmup <= now < duration, now)


def run_on(task: SimTask, node: SimNode, start: float, end: float) -> None:
    task.node, task.busy_start, task.busy_end = node, start, end


def finished(task: SimTask) -> TaskFinished:
    return TaskFinished(task.spec.task_id, "n", Usage(1.0, 50))


def test_counts_and_littles_law_over_a_hand_computed_run():
    stats = recorder()
    node = build_fleet(SCENARIO, 1)[0]
    a = submit(stats, "a", 0.0)
    b = submit(stats, "b", 1.0)
    run_on(a, node, 0.0, 2.0)
    stats.record_event(finished(a), 2.0)
    stats.record_completed(a, node, 2.0, 0.5)
    stats.record_event(finished(b), 4.0)
    stats.record_completed(b, None, 4.0, 0.25)
    stats.close(4.0, [], [])
    report = stats.report(4.0, 0)
    assert report["tasks"] == {"submitted": 2, "completed": 2, "failed": 0, "expired": 0,
                               "requeued": 0, "rejected": 0, "cancelled": 0,
                               "unfinished": 0}
    # One task in [0, 1], two in [1, 2], one in [2, 4]: area 5 over a 4 s window; the
    # two tasks stayed 2 s and 3 s.
    little = report["little"]
    assert little["L"] == pytest.approx(5 / 4)
    assert little["lambda"] == pytest.approx(2 / 4)
    assert little["W"] == pytest.approx(2.5)
    assert little["error_pct"] == pytest.approx(0.0, abs=1e-12)
    assert report["latency"]["mean"] == pytest.approx(2.5)
    assert report["cost"]["total"] == pytest.approx(0.75)
    reference = 2 * openai_cost("llama2:7b", 100, 50, 0, 0.0)
    assert report["cost"]["openai_equivalent"] == pytest.approx(reference)
    assert report["by_priority"]["standard"]["completed"] == 2


def test_a_rejected_task_is_taken_back_out_of_the_system():
    stats = recorder()
    submit(stats, "a", 1.0)
    stats.record_rejected(1.0)
    stats.close(2.0, [], [])
    report = stats.report(2.0, 0)
    assert report["tasks"]["submitted"] == 0
    assert report["tasks"]["rejected"] == 1
    assert stats.in_system == 0
    assert report["little"] == {"L": 0.0, "lambda": 0.0, "W": 0.0, "error_pct": 0.0}


def test_an_interrupted_run_is_busy_until_the_interruption_only():
    stats = recorder()
    node = build_fleet(SCENARIO, 1)[0]
    node.online_since = 0.0
    task = submit(stats, "a", 0.0)
    run_on(task, node, 1.0, 9.0)
    stats.record_requeued(task, node, 3.0)  # busy [1, 3], not [1, 9]
    run_on(task, node, 5.0, 7.0)
    stats.record_expired(task, node, 4.0)  # before the run started: busy [5, 5]
    stats.record_online(node, 10.0)
    stats.close(10.0, [], [])
    report = stats.report(10.0, 0)
    assert report["tasks"]["requeued"] == 1 and report["tasks"]["expired"] == 1
    name = gpu_names(SCENARIO)[node.gpu_index]
    assert report["utilization"]["by_gpu"][name] == pytest.approx(2 / 10)
    # The A100 node (2 slots) was never online: its share is 0, not a division by 0.
    assert report["utilization"]["by_gpu"]["A100"] == 0.0


def test_the_window_opens_at_warmup_with_the_tasks_present_then():
    stats = recorder(warmup=5.0)
    node = build_fleet(SCENARIO, 1)[1]
    early = submit(stats, "early", 1.0, warmup=5.0)
    stats.warmup_ends(5.0)
    late = submit(stats, "late", 6.0, warmup=5.0)
    stats.record_event(finished(early), 7.0)
    stats.record_completed(early, None, 7.0, 1.0)  # not measured: before the window
    stats.record_event(finished(late), 8.0)
    stats.record_cancelled(late, None, 8.0)
    running = submit(stats, "running", 9.0, warmup=5.0)
    run_on(running, node, 9.0, 12.0)
    stats.close(10.0, [running], [])
    report = stats.report(10.0, 1)
    assert report["tasks"]["completed"] == 1 and report["tasks"]["cancelled"] == 1
    assert report["tasks"]["unfinished"] == 1
    assert math.isnan(report["latency"]["mean"])  # no measured completion
    assert report["cost"]["total"] == 0.0
    # In [5, 10]: "early" 2 s of it, "late" 2 s, "running" 1 s, three tasks.
    little = report["little"]
    assert little["lambda"] == pytest.approx(3 / 5)
    assert little["W"] == pytest.approx(5 / 3)
    assert little["L"] == pytest.approx(little["lambda"] * little["W"])
    assert stats.busy.ends[-1] == 10.0  # the running task's GPU time is cut at the end


def test_every_priority_of_the_scenario_gets_an_entry():
    nodes = build_fleet(SCENARIO, 1)
    stats = StatsRecorder(0.0, 10.0, gpu_names(SCENARIO), [n.gpu_index for n in nodes],
                          [int(Priority.CRITICAL), int(Priority.STANDARD)])
    task = submit(stats, "a", 0.0, priority=Priority.CRITICAL)
    stats.record_completed(task, None, 1.0, 0.0)
    stats.close(1.0, [], [])
    by_priority = stats.report(1.0, 0)["by_priority"]
    assert list(by_priority) == ["standard", "critical"]
    assert by_priority["critical"]["completed"] == 1
    assert by_priority["standard"]["completed"] == 0
    assert math.isnan(by_priority["standard"]["latency"]["p50"])
