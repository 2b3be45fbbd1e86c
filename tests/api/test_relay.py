"""The relay: tasks handed to the coordinator in order, withdrawn when cancelled
first, rejected ones closed; results turned into the stored text."""
from __future__ import annotations

from pathlib import Path

import attrs
import trio

from api.access import RateLimiter
from api.relay import Dispatcher, result_text
from api.store import TaskRow, open_store
from engine.core import TaskState
from engine.runtime import SubmitOutcome


@attrs.define
class RecordingCoordinator:
    refuse: set[str]
    submitted: list[tuple[str, dict, dict]] = attrs.field(factory=list)

    async def submit_many(self, tasks) -> list[SubmitOutcome]:  # type: ignore[no-untyped-def]
        outcomes = []
        for spec, payload, params in tasks:
            self.submitted.append((spec.task_id, payload, params))
            if spec.task_id in self.refuse:
                outcomes.append(SubmitOutcome(spec.task_id, False, TaskState.REJECTED,
                                              "queue full"))
            else:
                outcomes.append(SubmitOutcome(spec.task_id, True, TaskState.QUEUED))
        return outcomes


def row(task_id: str) -> TaskRow:
    return TaskRow(task_id, "anon:x", "llama2:7b", "high", f"prompt {task_id}",
                   {"max_tokens": 4}, "queued", 1.0, 0.0, 0.0, 0.0)


async def test_dispatch_in_order_withdraw_and_reject(tmp_path: Path) -> None:
    coordinator, limiter = RecordingCoordinator(refuse={"c"}), RateLimiter()
    async with open_store(str(tmp_path / "d.db")) as store:
        dispatcher = Dispatcher(coordinator, store, limiter, lambda: 5.0)
        for task_id in "abcd":
            await store.insert_task(row(task_id))
            dispatcher.hand_over(row(task_id))
        assert limiter.in_flight == {"anon:x": 4}
        assert dispatcher.withdraw("b") and not dispatcher.withdraw("b")
        async with trio.open_nursery() as nursery:
            await nursery.start(dispatcher.serve)
            with trio.fail_after(5):
                while len(coordinator.submitted) < 3:
                    await trio.sleep(0.01)
            await store.barrier()
            nursery.cancel_scope.cancel()
        assert [s[0] for s in coordinator.submitted] == ["a", "c", "d"]
        assert coordinator.submitted[0][1:] == ({"prompt": "prompt a"}, {"max_tokens": 4})
        assert not dispatcher.withdraw("a")  # handed over: the coordinator cancels it now
        rejected = await store.get_task("c")
        assert (rejected.status, rejected.error) == ("rejected", "queue full")
        assert limiter.in_flight == {"anon:x": 3}  # c left; b is closed by the cancel route


def test_results_are_text() -> None:
    assert result_text("hi") == "hi"
    assert result_text({"text": "hi", "tokens": [1]}) == "hi"
    assert result_text({"image": "b64"}) == '{"image": "b64"}'
    assert result_text(None) is None
