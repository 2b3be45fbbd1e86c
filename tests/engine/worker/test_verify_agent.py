"""Verification jobs over the worker protocol: an `assign` with `verify` runs the
runner's verify in a worker thread and answers with a `result` whose output is the
verdict; an ordinary result carries the runner's proof. The coordinator's side is
played frame by frame over an in-memory connection; the model is the demo pack."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from engine.protocol import (
    Accepted, AssignTask, Failed, Hello, Result, Welcome, decode, encode, memory_connection_pair,
)
from engine.worker import ThreadedExecutor
from engine.worker.agent import Worker, WorkerConfig
from engine.worker.runners import NoopRunner, load_runner
from engine.worker.runners.demo_pack import ensure_demo_pack

MODEL = "llama2:7b"
PARAMS = {"temperature": 0, "max_tokens": 8}


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory) -> ThreadedExecutor:
    pack = ensure_demo_pack(Path(tmp_path_factory.mktemp("demo")) / "demo")
    return ThreadedExecutor({MODEL: load_runner(MODEL, pack, providers_preference="cpu"),
                             "noop": NoopRunner("noop")}, max_threads=2)


async def exchange(executor: ThreadedExecutor, assigns: list[AssignTask]) -> list[Any]:
    """Send each assign in turn; the final frame (result or failed) of each."""
    ours, theirs = memory_connection_pair()
    worker = Worker(WorkerConfig(token="t"), executor, lambda: _just(theirs))
    replies = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        assert isinstance(decode(await ours.receive()), Hello)
        await ours.send(encode(Welcome("node_1", 60.0)))
        for assign in assigns:
            await ours.send(encode(assign))
            while True:
                frame = decode(await ours.receive())
                if isinstance(frame, (Result, Failed)):
                    replies.append(frame)
                    break
                assert not isinstance(frame, Accepted) or frame.task_id == assign.task_id
        worker.stop()
        nursery.cancel_scope.cancel()
    return replies


class _just:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def __aenter__(self) -> Any:
        return self.conn

    async def __aexit__(self, *exc: object) -> None:
        return None


async def test_a_verify_assign_answers_with_a_verdict(executor: ThreadedExecutor) -> None:
    prompt = {"prompt": "hello there"}
    (result,) = await exchange(executor, [AssignTask("t1", MODEL, prompt, PARAMS)])
    assert isinstance(result, Result) and result.proof is not None
    assert result.proof["token_ids"] and result.proof["commitments"]["positions"] == [0]
    honest = {"claimed": result.output, "proof": result.proof}
    fake = {"claimed": "not what the model says", "proof": None}
    replies = await exchange(executor, [
        AssignTask("v1", MODEL, prompt, PARAMS, verify=honest),
        AssignTask("v2", MODEL, prompt, PARAMS, verify=fake),
        AssignTask("v3", MODEL, prompt, PARAMS, verify={"claimed": {"not": "text"}, "proof": None}),
        AssignTask("v4", "noop", prompt, {}, verify={"claimed": NoopRunner.OUTPUT}),
    ])
    verdicts = [reply.output for reply in replies]
    assert all(isinstance(reply, Result) for reply in replies)
    assert [v["passed"] for v in verdicts] == [True, False, False, True]
    assert all(set(v) == {"passed", "score", "detail"} and v["detail"] for v in verdicts)
    assert verdicts[0]["score"] == 1.0
    assert all(reply.usage.tokens == 0 and reply.usage.seconds >= 0 and reply.proof is None
               for reply in replies)


async def test_a_malformed_verify_job_is_refused(executor: ThreadedExecutor) -> None:
    replies = await exchange(executor, [
        AssignTask("m1", MODEL, {"prompt": "x"}, PARAMS, verify={"proof": None}),
        AssignTask("m2", MODEL, {"prompt": "x"}, PARAMS, verify={"claimed": "x", "proof": [1]}),
        AssignTask("m3", MODEL, {"prompt": 5}, PARAMS, verify={"claimed": "x"}),
    ])
    assert all(isinstance(reply, Failed) and not reply.retryable for reply in replies)
    assert "claimed" in replies[0].error and "proof" in replies[1].error and "prompt" in replies[2].error
