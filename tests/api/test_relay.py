"""The relay: tasks handed to the coordinator in order, withdrawn when cancelled
first, rejected ones closed; results turned into the stored text."""
from __future__ import annotations

from pathlib import Path

import attrs
import trio

from api.access import RateLimiter
from api.relay import RETAINED_CHARS, RETAINED_TASKS, Dispatcher, TaskFeed, result_text
from api.store import TaskChange, TaskRow, open_store
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


def change(task_id: str, status: str) -> TaskChange:
    return TaskChange(task_id, status, 1.0)


def first_event(feed: TaskFeed, task_id: str) -> tuple[str, dict] | None:
    with feed.subscribe(task_id) as receive:
        try:
            return receive.receive_nowait()
        except trio.WouldBlock:
            return None


def test_a_late_subscriber_is_sent_the_text_so_far_first() -> None:
    feed = TaskFeed()
    assert first_event(feed, "t") is None  # nothing streamed yet
    feed.publish_progress("t", {"tokens": ["Hel"], "index": 0})
    feed.publish_progress("t", {"step": 3})  # progress without text is not kept
    feed.publish_progress("t", {"tokens": ["lo", 7], "index": 1})  # a non-text piece is not
    with feed.subscribe("t") as receive:
        assert receive.receive_nowait() == ("progress", {"tokens": ["Hel", "lo"], "index": 1,
                                                         "replayed": True})
        feed.publish_progress("t", {"tokens": ["!"], "index": 2})
        assert receive.receive_nowait() == ("progress", {"tokens": ["!"], "index": 2})
    assert first_event(feed, "t") == ("progress", {"tokens": ["Hel", "lo", "!"], "index": 2,
                                                   "replayed": True})
    feed.publish_state("t", change("t", "queued"))  # requeued: the next run starts over
    assert first_event(feed, "t") is None
    feed.publish_progress("t", {"tokens": ["Hi"]})
    assert first_event(feed, "t") == ("progress", {"tokens": ["Hi"], "replayed": True})
    feed.publish_state("t", change("t", "completed"))  # ended: the store has the result
    assert first_event(feed, "t") is None


def test_the_kept_text_is_bounded_per_task_and_in_tasks() -> None:
    feed = TaskFeed()
    feed.publish_progress("long", {"tokens": ["x" * RETAINED_CHARS]})
    assert first_event(feed, "long") is not None
    feed.publish_progress("long", {"tokens": ["y"]})  # over the bound: never a part of it
    feed.publish_progress("long", {"tokens": ["z"]})
    assert first_event(feed, "long") is None
    for n in range(RETAINED_TASKS + 1):  # with "long", two more than are kept
        feed.publish_progress(f"t{n}", {"tokens": [str(n)]})
    assert first_event(feed, "t0") is None  # the oldest ones were forgotten
    assert first_event(feed, "t1") == ("progress", {"tokens": ["1"], "replayed": True})
    assert first_event(feed, f"t{RETAINED_TASKS}") is not None
