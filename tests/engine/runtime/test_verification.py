"""Verification in the live runtime, over the real protocol: held results, the
verification `assign` (with `verify`) on a validator, verdicts as `result`
frames, quarantine told to the worker as an `error` frame.

The workers here are scripted protocol clients (ScriptedWorker). Answering a
verification job is the worker side's business (engine/worker, another branch):
until it lands, the scripted worker is the boundary stand-in, and it judges a
claimed output by comparing it with what an honest run of the same input gives
(the test executor's deterministic output, `honest_output`)."""
from __future__ import annotations

import math
from typing import Any

import trio

from engine.core import TaskSpec, TaskState, Usage
from engine.protocol import (
    AssignTask, CancelTask, Error, Gpu, Heartbeat, Hello, Result, Welcome,
)
from engine.runtime import CompletedUpdate, CoordinatorConfig, NodeIdentity, VerificationUpdate
from tests.engine.runtime.harness import MODEL, Net, RawClient, open_net

CONFIG = CoordinatorConfig(heartbeat_interval=1.0, heartbeat_timeout=math.inf,
                           hello_timeout=2.0, keep_finished=True,
                           trusted_nodes=("validator",), initial_slots=None)


async def identity(token: str) -> NodeIdentity:
    return NodeIdentity(token, token)  # the token names the node


def honest_output(payload: Any) -> str:
    return f"done:{payload['prompt']}"


class ScriptedWorker:
    """A worker over the real protocol that runs tasks by `behaviour` ("honest":
    the honest output; "fabricate": invented text; "bad_verdict": answers a
    verification job with a string, not a verdict) and judges verification jobs
    by comparing the claimed output with the honest one."""

    def __init__(self, net: Net, name: str, behaviour: str = "honest") -> None:
        self.net, self.name, self.behaviour = net, name, behaviour
        self.client = RawClient(net)
        self.assigns: list[AssignTask] = []
        self.errors: list[Error] = []
        self.cancels: list[CancelTask] = []

    async def start(self) -> None:
        await self.client.send(Hello(self.name, Gpu("RTX 4090", 24.0), (MODEL,), 2,
                                     name=self.name))
        welcome = await self.client.receive()
        assert isinstance(welcome, Welcome), welcome
        self.net.nursery.start_soon(self.serve)

    async def serve(self) -> None:
        while True:
            try:
                message = await self.client.receive(timeout=10_000)
            except Exception:  # noqa: BLE001 - the connection ended
                return
            if isinstance(message, AssignTask):
                self.assigns.append(message)
                await self.answer(message)
            elif isinstance(message, Error):
                self.errors.append(message)
            elif isinstance(message, CancelTask):
                self.cancels.append(message)

    async def answer(self, assign: AssignTask) -> None:
        await trio.sleep(1.0)
        usage = Usage(1.0, tokens=4, prompt_tokens=1)
        if assign.verify is not None:
            if self.behaviour == "bad_verdict":
                output: Any = "looks fine to me"
            else:
                claimed = assign.verify["claimed"]
                passed = claimed == honest_output(assign.input)
                output = {"passed": passed, "score": 1.0 if passed else 0.0,
                          "detail": "matches" if passed else f"differs: {claimed!r}"}
            await self.client.send(Result(assign.task_id, output, usage))
            return
        text = ("lorem ipsum" if self.behaviour == "fabricate"
                else honest_output(assign.input))
        await self.client.send(Result(assign.task_id, text, usage, "length",
                                      proof={"commitments": ["abc"]}))

    async def heartbeat(self) -> None:
        await self.client.send(Heartbeat())


async def start(net: Net, *workers: tuple[str, str]) -> dict[str, ScriptedWorker]:
    out = {}
    for name, behaviour in workers:
        out[name] = w = ScriptedWorker(net, name, behaviour)
        await w.start()
    await net.until_nodes(len(workers))
    return out


async def submit(net: Net, task_id: str, verify: str = "always") -> None:
    spec = TaskSpec(task_id, MODEL, output_tokens=4, verify=verify,
                    deadline=net.c.now() + 600.0)
    outcome = await net.c.submit(spec, {"prompt": task_id}, {"max_tokens": 4})
    assert outcome.accepted


def verifications(net: Net, task_id: str) -> list[VerificationUpdate]:
    """The task's verification updates, the one its completion carries included."""
    out = []
    for u in net.of(task_id):
        if isinstance(u, VerificationUpdate):
            out.append(u)
        elif isinstance(u, CompletedUpdate) and u.verification is not None:
            out.append(u.verification)
    return out


async def test_an_honest_result_is_verified_then_delivered(autojump_clock):
    async with open_net(CONFIG, verify_token=identity) as net:
        w = await start(net, ("validator", "honest"), ("worker", "honest"))
        await submit(net, "t")
        await net.until_final("t")
        final = net.final("t")
        assert final.state is TaskState.COMPLETED and final.result == "done:t"
        statuses = [v.status for v in verifications(net, "t")]
        assert statuses == ["pending", "passed"]
        passed = verifications(net, "t")[-1]
        assert passed.validator != passed.producer
        # the validator got the task's input and the claimed output with its proof
        [job] = [a for a in w[passed.validator].assigns if a.verify is not None]
        assert job.input == {"prompt": "t"}
        assert job.verify == {"claimed": "done:t", "proof": {"commitments": ["abc"]}}
        # the job is not an API task: no update names it
        assert not net.of(job.task_id)
        # the verdict goes out with the completion it explains: one update
        assert final.verification is not None and final.verification.status == "passed"
        assert [u.kind for u in net.of("t")].count("verification") == 1  # the pending one


async def test_a_fabricated_result_is_rerun_on_an_honest_node_and_its_node_quarantined(
        autojump_clock):
    async with open_net(CONFIG, verify_token=identity) as net:
        w = await start(net, ("validator", "honest"), ("liar", "fabricate"),
                        ("worker", "honest"))
        # the first task lands on the liar or the worker; submit until the liar ran one
        for i in range(4):
            await submit(net, f"t{i}")
        await net.until_final(*[f"t{i}" for i in range(4)])
        for i in range(4):
            final = net.final(f"t{i}")
            assert final.state is TaskState.COMPLETED and final.result == f"done:t{i}"
            assert final.node_id != "liar"
        failed = [v for i in range(4) for v in verifications(net, f"t{i}")
                  if v.status == "failed"]
        assert failed and all(v.producer == "liar" and v.rerun for v in failed)
        # told why, in an error frame; it gets nothing after that
        await net.until(lambda: w["liar"].errors)
        assert "quarantined" in w["liar"].errors[0].message
        assert net.c.scheduler.trust.reputation.get("liar").quarantined
        before = len(w["liar"].assigns)
        await submit(net, "after")
        await net.until_final("after")
        assert len(w["liar"].assigns) == before


async def test_a_malformed_verdict_is_the_validators_protocol_fault(autojump_clock):
    async with open_net(CONFIG, verify_token=identity) as net:
        w = await start(net, ("validator", "bad_verdict"), ("worker", "honest"))
        await submit(net, "t", verify="sampled")
        await net.until(lambda: w["validator"].errors)
        assert "verdict" in w["validator"].errors[0].message
        # a sampled task whose verification cannot complete is delivered, marked
        await net.until_final("t")
        assert net.final("t").state is TaskState.COMPLETED
        assert verifications(net, "t")[-1].status == "unverified"
