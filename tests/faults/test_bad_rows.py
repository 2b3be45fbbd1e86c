"""Finding 2 of issue 11, the API's half: a prompt with a lone surrogate is a 400
naming the field; one row the database cannot take never fails the other writes
of its group-commit batch; a task change the database refuses is logged, counted
in /health and fails its task saying why (never a task `running` forever); text
that is not valid Unicode in a completion is stored with U+FFFD, not lost."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from api.store import TaskChange, TaskRow, open_store
from tests.api.conftest import Harness


async def test_a_lone_surrogate_in_the_prompt_is_a_400_naming_the_field(api: Harness) -> None:
    for body in (b'{"prompt": "\\ud800"}', b'{"prompt": "ok \\udfff then"}'):
        response = await api.client.post("/api/tasks", data=body,
                                         headers={"Content-Type": "application/json"})
        assert response.status_code == 400
        details = (await response.get_json())["details"]
        assert "'prompt'" in details and "surrogate" in details
    assert (await api.submit({"prompt": "a pair is fine: \ud83d\ude00"}))["success"] is True


def row(task_id: str, prompt: str = "hello") -> TaskRow:
    return TaskRow(task_id, "anon:test", "llama2:7b", "standard", prompt, {"max_tokens": 8},
                   "queued", 1.0, 0.0, 0.0, 0.0)


async def test_one_bad_row_never_fails_the_others_in_its_batch(tmp_path: Path) -> None:
    async with open_store(str(tmp_path / "batch.db")) as store:
        outcomes: dict[str, object] = {}

        async def insert(task: TaskRow) -> None:
            try:
                await store.insert_task(task)
                outcomes[task.id] = "ok"
            except Exception as exc:
                outcomes[task.id] = type(exc).__name__

        async with trio.open_nursery() as nursery:  # queued together: one batch
            for i in range(5):
                nursery.start_soon(insert, row(f"good{i}"))
            nursery.start_soon(insert, row("bad", prompt="\ud800"))
        assert outcomes.pop("bad") != "ok"
        assert set(outcomes.values()) == {"ok"}
        for i in range(5):
            assert (await store.get_task(f"good{i}")) is not None


async def test_a_refused_task_change_is_logged_counted_and_fails_its_task(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with open_store(str(tmp_path / "refused.db")) as store:
        for task_id in ("huge", "other", "surrogate"):
            await store.insert_task(row(task_id))
        with caplog.at_level(logging.ERROR, logger="neurogrid.store"):
            done = TaskChange("huge", "completed", 2.0, result="x", tokens_used=2**63)
            await store.post_task_change(done)  # these three go in one batch
            await store.post_task_change(TaskChange("other", "completed", 2.0, result="fine"))
            await store.post_task_change(TaskChange("surrogate", "completed", 2.0,
                                                    result="half \ud800 a pair"))
            await store.barrier()
        huge = await store.get_task("huge")
        assert huge is not None and huge.status == "failed"
        assert huge.error is not None and "could not be stored" in huge.error
        other = await store.get_task("other")
        assert other is not None and (other.status, other.result) == ("completed", "fine")
        surrogate = await store.get_task("surrogate")
        assert surrogate is not None and surrogate.status == "completed"
        assert surrogate.result == "half \ufffd a pair"
        assert any("task huge -> completed" in r.getMessage() for r in caplog.records)
        health = await store.health()
        assert health.refused_changes == 1 and not health.degraded


async def test_health_surfaces_refused_changes(api: Harness) -> None:
    task_id = (await api.submit())["task_id"]
    await api.services.store.post_task_change(
        TaskChange(task_id, "completed", api.clock(), tokens_used=2**64))
    await api.services.store.barrier()
    response = await api.client.get("/health")
    report = await response.get_json()
    assert response.status_code == 200 and report["status"] == "OK"
    assert report["store"]["refused_changes"] == 1
    task = (await (await api.client.get(f"/api/tasks/{task_id}")).get_json())["task"]
    assert task["status"] == "failed" and "could not be stored" in task["error"]
