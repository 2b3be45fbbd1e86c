"""The live runtime in virtual time: a Coordinator with real worker agents over
in-memory connections, their tasks taking virtual seconds (MockClock autojump)."""
from __future__ import annotations

import math

import trio

from engine.core import TaskSpec, TaskState
from engine.runtime import CoordinatorConfig, NodeIdentity
from engine.protocol import (
    Accepted, AssignTask, CancelTask, Error, Heartbeat, Result, Welcome,
)
from engine.core import Usage
from tests.engine.runtime.harness import FAST, MODEL, RawClient, open_net

Q, R, DONE = TaskState.QUEUED, TaskState.RUNNING, TaskState.COMPLETED


async def test_tasks_are_assigned_completed_and_streamed(autojump_clock):
    async with open_net() as net:
        a, b = net.start_worker("a", slots=2), net.start_worker("b", slots=1)
        await net.until_nodes(2)
        ids = [f"t{i}" for i in range(6)]
        outcomes = [await net.submit(t, seconds=2.0) for t in ids]
        assert all(o.accepted for o in outcomes)
        assert [o.state for o in outcomes[:3]] == [R, R, R]  # 3 free slots, placed at once
        assert [o.state for o in outcomes[3:]] == [Q, Q, Q]
        await net.until_final(*ids)
        for t in ids:
            final = net.final(t)
            assert final.state is DONE and final.result == f"done:{t}"
            assert final.usage.tokens == 4 and final.cost > 0 and final.finish_reason == "length"
            states = net.states(t)
            assert states[:2] == [Q, R] and states[-1] is DONE and states.count(DONE) == 1
            tokens = [tok for u in net.of(t, "progress") for tok in u.partial["tokens"]]
            assert tokens == ["t0", "t1", "t2", "t3"]
            # every progress update comes after `running` and before `completed`
            kinds = [u.kind for u in net.of(t)]
            assert kinds.index("progress") > 1 and kinds[-1] == "state"
        assert sorted(a.executor.finished + b.executor.finished) == ids
        assert len(a.executor.finished) > len(b.executor.finished)
        snap = net.c.snapshot()
        assert snap.running == 0 and snap.queued == 0 and snap.counters["completed"] == 6


async def test_killed_worker_task_finishes_elsewhere_exactly_once(autojump_clock):
    async with open_net() as net:
        workers = [net.start_worker("a"), net.start_worker("b")]
        await net.until_nodes(2)
        outcome = await net.submit("long", seconds=10.0, steps=10)
        await net.until(lambda: net.of("long", "progress"))
        victim = next(w for w in workers if w.node_id == outcome.node_id)
        other = next(w for w in workers if w is not victim)
        victim.kill()
        await net.until_final("long")
        final = net.final("long")
        assert final.state is DONE and final.node_id == other.node_id
        assert net.states("long").count(DONE) == 1
        requeued = [u for u in net.of("long", "state") if u.state is Q][1:]
        assert len(requeued) == 1 and "node lost" in requeued[0].error
        assert victim.executor.finished == [] and other.executor.finished == ["long"]
        assert net.c.task("long").attempts == 1  # a lost node's run does not count
        await trio.sleep(30)  # nothing else happens later: no duplicate completion
        assert net.states("long").count(DONE) == 1
        assert len(net.c.snapshot().nodes) == 1


async def test_silent_worker_times_out_and_its_task_is_requeued(autojump_clock):
    async with open_net() as net:
        raw = RawClient(net)
        welcome = await raw.hello()
        assert isinstance(welcome, Welcome) and welcome.heartbeat_interval == 1.0
        await net.submit("t", seconds=1.0)
        assign = await raw.receive()
        assert isinstance(assign, AssignTask) and assign.input == {"prompt": "t"}
        await raw.send(Accepted("t"))
        # never a heartbeat: after heartbeat_timeout the node is dropped, with a reason
        dropped_at = None
        while True:
            message = await raw.receive()
            if isinstance(message, Error):
                dropped_at = trio.current_time()
                break
        assert "no heartbeat" in message.message
        assert net.states("t")[-1] is Q and "node lost" in net.of("t", "state")[-1].error
        worker = net.start_worker("healthy")
        await net.until_final("t")
        assert net.final("t").node_id == worker.node_id
        # a worker that heartbeats stays, far beyond the timeout
        await trio.sleep(20 * FAST.heartbeat_timeout)
        assert [n.name for n in net.c.snapshot().nodes] == ["healthy"]
        assert dropped_at is not None


async def test_cancellation_reaches_the_worker(autojump_clock):
    async with open_net() as net:
        w = net.start_worker("a")
        await net.until_nodes(1)
        await net.submit("c", seconds=100.0, steps=100)
        await net.until(lambda: net.of("c", "progress"))
        assert await net.c.cancel("c") is True
        await net.until(lambda: w.executor.cancelled == ["c"])
        assert net.final("c").state is TaskState.CANCELLED
        assert await net.c.cancel("c") is False  # already ended
        assert await net.c.cancel("nope") is False
        # the slot is free again at once
        await net.submit("next", seconds=1.0)
        await net.until_final("next")
        assert net.final("next").state is DONE
        assert w.executor.finished == ["next"]


async def test_deadline_expires_a_running_task_on_its_worker(autojump_clock):
    async with open_net() as net:
        w = net.start_worker("a")
        await net.until_nodes(1)
        await net.submit("slow", seconds=50.0, steps=50, deadline=net.c.now() + 5.0)
        await net.until_final("slow")
        assert net.final("slow").state is TaskState.EXPIRED
        await net.until(lambda: w.executor.cancelled == ["slow"])


async def test_failures_retry_elsewhere_or_fail_for_good(autojump_clock):
    async with open_net() as net:
        net.start_worker("a")
        net.start_worker("b")
        await net.until_nodes(2)
        await net.submit("bad", fail="invalid")
        await net.submit("crash", fail="crash")
        await net.until_final("bad", "crash")
        bad = net.final("bad")
        assert bad.state is TaskState.FAILED and bad.error == "bad input"
        assert net.c.task("bad").attempts == 1  # not retried: the input is the problem
        crash = net.final("crash")
        assert crash.state is TaskState.FAILED and "runner crashed" in crash.error
        assert net.c.task("crash").attempts == 3  # retried up to max_attempts


async def test_drain_finishes_running_work_and_takes_no_more(autojump_clock):
    async with open_net() as net:
        a, b = net.start_worker("a"), net.start_worker("b")
        await net.until_nodes(2)
        first = await net.submit("first", seconds=5.0)
        leaving = a if first.node_id == a.node_id else b
        staying = b if leaving is a else a
        await net.until(lambda: net.of("first", "progress"))
        leaving.worker.drain()
        await net.until(lambda: any(n.draining for n in net.c.snapshot().nodes))
        second = await net.submit("second", seconds=1.0)
        assert second.node_id == staying.node_id
        await net.until_final("first", "second")
        assert net.final("first").node_id == leaving.node_id  # finished, not handed back
        await leaving.done.wait()
        assert leaving.error is None
        await net.until_nodes(1)


async def test_drain_hands_back_what_does_not_finish_in_time(autojump_clock):
    async with open_net() as net:
        a = net.start_worker("a", drain_grace=2.0)
        await net.until_nodes(1)
        await net.submit("long", seconds=60.0, steps=60)
        await net.until(lambda: net.of("long", "progress"))
        a.worker.drain()
        await a.done.wait()
        assert a.executor.cancelled == ["long"]
        await net.until(lambda: net.states("long")[-1] is Q)
        b = net.start_worker("b")
        await net.until_final("long")
        assert net.final("long").node_id == b.node_id


async def test_worker_reconnects_with_exponential_backoff_and_jitter(autojump_clock):
    async with open_net() as net:
        w = net.start_worker("a", fail_first=4, backoff_initial=0.5, backoff_max=3.0)
        await net.until_nodes(1)
        gaps = [t1 - t0 for t0, t1 in zip(w.attempts, w.attempts[1:])]
        for gap, ceiling in zip(gaps, [0.5, 1.0, 2.0, 3.0]):
            assert ceiling / 2 <= gap <= ceiling
        assert len(set(round(g / c, 6) for g, c in zip(gaps, [0.5, 1, 2, 3]))) > 1  # jittered
        # the coordinator goes away (the session is dropped): the worker comes back
        first_id = w.node_id
        net.c._sessions[first_id].close("coordinator restarting")
        await net.until(lambda: w.node_id != first_id and len(net.c.snapshot().nodes) == 1)
        await net.submit("after", seconds=1.0)
        await net.until_final("after")
        assert net.final("after").node_id == w.node_id


async def test_worker_gives_up_after_max_retries(autojump_clock):
    async with open_net() as net:
        w = net.start_worker("a", fail_first=100, max_retries=2)
        await w.done.wait()
        assert type(w.error).__name__ == "CoordinatorUnreachable"
        assert len(w.attempts) == 3


async def test_token_check_refuses_bad_tokens_and_names_good_ones(autojump_clock):
    async def verify(token: str) -> NodeIdentity | None:
        await trio.sleep(0.01)
        return NodeIdentity("node_de", "frankfurt-1") if token == "good" else None

    async with open_net(verify_token=verify) as net:
        bad = net.start_worker("x", token="bad")
        await bad.done.wait()
        assert type(bad.error).__name__ == "WorkerRefused"
        assert "token refused" in str(bad.error)
        assert len(bad.attempts) == 1  # a refusal is final: no retry storm
        good = net.start_worker("", token="good")
        await net.until_nodes(1)
        node = net.c.snapshot().nodes[0]
        assert (node.node_id, node.name, good.node_id) == ("node_de", "frankfurt-1", "node_de")
        # the same node connecting again replaces its old connection
        again = net.start_worker("", token="good")
        await net.until(lambda: again.node_id == "node_de")
        await trio.sleep(5)
        assert len(net.c.snapshot().nodes) == 1


async def test_protocol_errors_get_error_frames_and_never_leak_tasks(autojump_clock):
    config = CoordinatorConfig(heartbeat_interval=1.0, heartbeat_timeout=math.inf,
                               max_protocol_errors=5, max_frame_bytes=4096)
    async with open_net(config) as net:
        raw = RawClient(net)
        assert isinstance(await raw.hello(), Welcome)
        for frame, expected in [
            ("{not json", "malformed JSON"),
            ('{"type": "teleport"}', "unknown message type"),
            ('{"type": "accepted"}', "missing field 'task_id'"),
            ('{"type": "heartbeat", "running": "t1"}', "expected a list"),
            ('{"type": "result", "task_id": "ghost", "output": 1, "usage": {"seconds": 1}}',
             "not assigned to this node"),
        ]:
            await raw.send(frame)
            reply = await raw.receive()
            assert isinstance(reply, Error) and expected in reply.message, (frame, reply)
        # still served: a task reaches it and its result counts
        await net.submit("t", seconds=1.0)
        assign = await raw.receive()
        assert isinstance(assign, AssignTask)
        await raw.send(Result("t", "ok", Usage(seconds=1.0, tokens=3)))
        await net.until_final("t")
        assert net.final("t").result == "ok"
        # one more bad frame is the sixth: the coordinator hangs up with a reason
        await raw.send("x" * 5000)
        reply = await raw.receive()
        assert isinstance(reply, Error) and "too many protocol errors" in reply.message
        assert "frame too large" in reply.message
        await net.until_nodes(0)


async def test_handshake_refusals(autojump_clock):
    async with open_net() as net:
        cases = [
            ('{"type": "heartbeat", "running": []}', "first frame must be hello"),
            ("[1, 2]", "bad hello"),
            ('{"type": "hello", "protocol": 2, "token": "t", "gpu": {"name": "x", '
             '"vram_gb": 1}, "models": ["llama2"], "slots": 1}', "protocol version 2"),
            ('{"type": "hello", "protocol": 1, "token": "t", "gpu": {"name": "x", '
             '"vram_gb": 1}, "models": ["llama2"], "slots": 0}', "slots must be"),
        ]
        for frame, expected in cases:
            raw = RawClient(net)
            await raw.send(frame)
            reply = await raw.receive()
            assert isinstance(reply, Error) and expected in reply.message and not reply.retry
        silent = RawClient(net)
        reply = await silent.receive()  # says nothing: refused after hello_timeout
        assert isinstance(reply, Error) and "no hello" in reply.message and reply.retry
        assert net.c.snapshot().nodes == ()


async def test_heartbeat_reconciles_tasks_the_worker_dropped_or_never_had(autojump_clock):
    async with open_net(CoordinatorConfig(heartbeat_interval=1.0, heartbeat_timeout=math.inf)
                        ) as net:
        raw = RawClient(net)
        await raw.hello(slots=2)
        await net.submit("kept", seconds=1.0)
        await net.submit("dropped", seconds=1.0)
        assert {(await raw.receive()).task_id for _ in range(2)} == {"kept", "dropped"}
        await raw.send(Accepted("kept"))
        await raw.send(Accepted("dropped"))
        # the worker lists a task it was never given, and no longer lists "dropped"
        await raw.send(Heartbeat(("kept", "stranger"), 0.5))
        # "dropped" is re-queued (and, this being the only node, sent again); the
        # stranger is cancelled on the worker
        replies = [await raw.receive(), await raw.receive()]
        assert CancelTask("stranger", "not assigned to this node") in replies
        again = next(r for r in replies if isinstance(r, AssignTask))
        assert (again.task_id, again.attempt) == ("dropped", 2)
        assert net.states("dropped") == [Q, R, Q, R]
        assert "dropped the task" in net.of("dropped", "state")[2].error
        assert net.states("kept") == [Q, R]


async def test_journal_replays_to_the_same_decisions(autojump_clock):
    config = CoordinatorConfig(heartbeat_interval=1.0, heartbeat_timeout=3.0, record=True,
                               policy="balanced", seed=7)
    async with open_net(config) as net:
        workers = [net.start_worker(f"w{i}", slots=2) for i in range(3)]
        await net.until_nodes(3)
        for i in range(12):
            await net.submit(f"t{i}", seconds=1.0 + i % 3)
        await net.until(lambda: net.of("t5", "progress"))
        workers[0].kill()
        await net.until_final(*[f"t{i}" for i in range(12)])
        journal = list(net.c.journal)
    replay = config.make_scheduler()
    for now, event, decisions in journal:
        assert replay.handle(event, now) == decisions
    assert any(type(e).__name__ == "NodeLost" for _, e, _ in journal)


async def test_submit_rejections(autojump_clock):
    async with open_net(CoordinatorConfig(max_frame_bytes=2048)) as net:
        ok = await net.submit("dup")
        assert ok.accepted
        again = await net.submit("dup")
        assert not again.accepted and "duplicate" in again.reason
        await net.until(lambda: net.states("dup"))
        assert net.states("dup") == [Q]  # the original task is untouched
        huge = await net.c.submit(TaskSpec("huge", MODEL), {"prompt": "x" * 5000})
        assert not huge.accepted and "too large" in huge.reason
        unknown = await net.c.submit(TaskSpec("u", "gpt-9"), {"prompt": "x"})
        assert not unknown.accepted and "unknown model" in unknown.reason
        # Updates reach on_update asynchronously: wait for the rejection's.
        await net.until(lambda: net.states("u"))
        assert net.states("u") == [TaskState.REJECTED]


async def test_submit_many_keeps_order_and_rejects_one_by_one(autojump_clock):
    async with open_net(CoordinatorConfig(max_frame_bytes=2048)) as net:
        outcomes = await net.c.submit_many([
            (TaskSpec("m1", MODEL), {"prompt": "a"}, None),
            (TaskSpec("m2", MODEL), {"prompt": "x" * 5000}, None),  # too large
            (TaskSpec("m1", MODEL), {"prompt": "b"}, None),  # duplicate of the first
            (TaskSpec("m3", MODEL), {"prompt": "c"}, {"max_tokens": 2}),
        ])
        assert [o.task_id for o in outcomes] == ["m1", "m2", "m1", "m3"]
        assert [o.accepted for o in outcomes] == [True, False, False, True]
        assert "too large" in outcomes[1].reason and "duplicate" in outcomes[2].reason
        assert net.c.task("m3") is not None and net.c.task("m2") is None
