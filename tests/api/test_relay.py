"""The relay: tasks handed to the coordinator in order, withdrawn when cancelled
first, rejected ones closed; results turned into the stored text."""
from __future__ import annotations

from pathlib import Path

import attrs
import trio

from api.access import RateLimiter
from api.relay import Dispatcher, result_text
from api.store import TaskRow, open_store
from engine.core import TaskState, gpu_class_name
from engine.protocol import Gpu, Hello, decode, encode
from engine.runtime import SubmitOutcome

from .conftest import FakeWorker, running_app, wait_for_status


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


async def test_a_task_row_shows_where_its_node_is_now(tmp_path: Path) -> None:
    # The node's place travels in the coordinator's update: a node that comes back
    # from elsewhere, with other hardware, shows its new place (nothing is cached).
    async with running_app(tmp_path / "moves.db") as api:
        token = await api.services.store.create_node_token("mover", api.clock())
        for location, gpu in (("Germany", "RTX 4090"), ("France", "NVIDIA A100-SXM4-80GB")):
            async with api.client.websocket("/api/nodes/connect") as ws:
                await ws.send(encode(Hello(token=token, name="mover", location=location,
                                           gpu=Gpu(gpu, 80.0), models=("llama2:7b",),
                                           slots=1)))
                worker = FakeWorker(ws, decode(await ws.receive()).node_id)
                task_id = (await api.submit())["task_id"]
                assign = await worker.next_assign()
                await worker.finish(assign["task_id"], f"done in {location}")
                task = await wait_for_status(api, task_id, "completed")
            assert task["result"] == f"done in {location}"
            assert task["node"] == {"id": "node_mover", "location": location,
                                    "gpu": gpu_class_name(gpu)}
        assert api.services.limiter.in_flight == {}
