"""`/metrics`: the Prometheus text format, parsed by the client library's own
parser; its task counters follow the tasks a test ran."""
from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from .conftest import Harness, fake_worker, running_app, wait_for_status


async def scrape(api: Harness) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """family name -> (sample name, sorted labels) -> value."""
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    text = (await response.get_data()).decode()
    return {family.name: {(s.name, tuple(sorted(s.labels.items()))): s.value
                          for s in family.samples}
            for family in text_string_to_metric_families(text)}


def value(families: dict, family: str, sample: str, **labels: str) -> float:
    return families[family].get((sample, tuple(sorted(labels.items()))), 0.0)


async def test_task_counters_match_the_tasks_run(tmp_path: Path) -> None:
    async with running_app(tmp_path / "m.db") as api:
        async with fake_worker(api, name="m1", gpu="RTX 4090") as worker:
            done = []
            for _ in range(3):
                task_id = (await api.submit())["task_id"]
                await worker.next_assign()
                api.clock.now += 2.0
                await worker.finish(task_id, "hi", seconds=1.5)
                done.append(await wait_for_status(api, task_id, "completed"))
            cancelled = (await api.submit({"prompt": "x", "priority": "high"}))["task_id"]
            await worker.next_assign()
            assert (await api.client.delete(f"/api/tasks/{cancelled}")).status_code == 200
            await api.services.store.barrier()
            families = await scrape(api)
            # the network's state at scrape time, from the coordinator's snapshot
            assert value(families, "neurogrid_nodes_online", "neurogrid_nodes_online",
                         gpu="RTX 4090") == 1
            assert value(families, "neurogrid_queue_depth", "neurogrid_queue_depth",
                         model="llama2:7b") == 0

    tasks = "neurogrid_tasks"
    model = done[0]["model"]
    assert value(families, tasks, "neurogrid_tasks_total", model=model, priority="standard",
                 state="queued") == 3
    assert value(families, tasks, "neurogrid_tasks_total", model=model, priority="standard",
                 state="running") == 3
    assert value(families, tasks, "neurogrid_tasks_total", model=model, priority="standard",
                 state="completed") == 3
    assert value(families, tasks, "neurogrid_tasks_total", model=model, priority="high",
                 state="cancelled") == 1
    assert value(families, tasks, "neurogrid_tasks_total", model=model, priority="standard",
                 state="failed") == 0
    durations = "neurogrid_task_duration_seconds"
    assert value(families, durations, durations + "_count", model=model,
                 state="completed") == 3
    assert value(families, durations, durations + "_sum", model=model,
                 state="completed") == 6.0  # the test clock moved 2 s per task
    assert value(families, "neurogrid_task_queue_wait_seconds",
                 "neurogrid_task_queue_wait_seconds_count", model=model) == 4
    assert value(families, "neurogrid_dispatched_tasks", "neurogrid_dispatched_tasks_total") == 4
    assert value(families, "neurogrid_placement_seconds",
                 "neurogrid_placement_seconds_count") >= 1
    assert value(families, "neurogrid_store_operations", "neurogrid_store_operations_total") > 0
    http = "neurogrid_http_request_duration_seconds"
    # routes are labelled by their rule, never by the raw path with its task id
    assert value(families, http, http + "_count", method="POST", route="/api/tasks",
                 status="200") == 4
    assert value(families, http, http + "_count", method="GET",
                 route="/api/tasks/<task_id>", status="200") >= 3
    assert not any(task["id"] in str(key) for task in done for key in families[http])


async def test_each_app_has_its_own_registry(tmp_path: Path) -> None:
    async with running_app(tmp_path / "a.db") as first, running_app(tmp_path / "b.db") as second:
        await first.submit()
        one, other = await scrape(first), await scrape(second)
    assert sum(v for (name, _), v in one["neurogrid_tasks"].items()
               if name == "neurogrid_tasks_total") == 1
    assert sum(v for (name, _), v in other.get("neurogrid_tasks", {}).items()
               if name == "neurogrid_tasks_total") == 0
    assert value(other, "neurogrid_http_request_duration_seconds",
                 "neurogrid_http_request_duration_seconds_count", method="GET",
                 route="/unmatched", status="404") == 0


def test_the_dashboard_activity_is_bounded_by_the_window_not_the_traffic() -> None:
    from api.network_watch import RECENT_TASKS, Activity
    from api.transitions import TaskTransition

    activity = Activity(samples_per_minute=50)
    for i in range(5_000):  # 50 seconds of 100 tasks a second
        activity(TaskTransition(f"t{i}", "llama2:7b", "standard", "completed", 1_000.0 + i / 100,
                                True, turnaround_seconds=float(i % 100)))
    assert sum(m.ended for m in activity.by_minute) == 5_000  # every task counted
    assert all(len(m.samples) <= 50 for m in activity.by_minute)  # a bounded sample
    assert len(activity.recent()) == RECENT_TASKS
    totals = activity.hour_totals()
    assert totals["completed"] == 5_000 and 30 <= totals["p50"] <= 70
