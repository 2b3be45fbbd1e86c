"""Verification through the API: the `verify` request field, the task JSON's
`verification` object, reputation and quarantine in /api/network/status and in
the dashboard's view.

The validator here is a test's fake worker on the app's websocket endpoint that
answers the verification `assign` (the one with `verify`) with a verdict the test
chooses: the boundary stand-in for the worker side (engine/worker)."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import trio

from engine.core import Usage
from engine.protocol import Result, encode
from engine.runtime import CoordinatorConfig
from tests.api.conftest import agent_worker, fake_worker, running_app, wait_for_status
from tests.api.test_metrics import scrape, value

TRUSTING = CoordinatorConfig(trusted_nodes=("validator",))


async def verdict(worker: Any, task_id: str, passed: bool, detail: str) -> None:
    output = {"passed": passed, "score": 1.0 if passed else 0.0, "detail": detail}
    await worker.ws.send(encode(Result(task_id, output, Usage(seconds=0.1))))


async def test_verify_is_validated_and_defaults_to_sampled(api):
    response = await api.client.post("/api/tasks", json={"prompt": "hi", "verify": "maybe"})
    assert response.status_code == 400
    body = await response.get_json()
    assert "verify" in body["details"] and "none, sampled, always" in body["details"]
    response = await api.client.post("/api/tasks", json={"prompt": "hi", "verify": 1})
    assert response.status_code == 400 and "verify" in (await response.get_json())["details"]
    created = await api.submit({"prompt": "hi"})
    task = (await (await api.client.get(f"/api/tasks/{created['task_id']}")).get_json())["task"]
    assert task["verify"] == "sampled"
    assert task["verification"]["status"] == "pending"  # not run yet


async def test_without_a_validator_a_sampled_result_is_delivered_marked_unverified(api):
    async with fake_worker(api, "worker") as worker:
        created = await api.submit({"prompt": "hello"})
        assign = await worker.next_assign()
        await worker.finish(assign["task_id"], "the answer")
        task = await wait_for_status(api, created["task_id"], "completed")
    assert task["result"] == "the answer"
    verification = task["verification"]
    assert verification["status"] == "unverified" and "no validator" in verification["detail"]
    assert verification["producer"] == worker.node_id and not verification["rerun"]


async def test_verify_none_is_not_checked(api):
    async with fake_worker(api, "worker") as worker:
        created = await api.submit({"prompt": "hello", "verify": "none"})
        assign = await worker.next_assign()
        await worker.finish(assign["task_id"], "plain")
        task = await wait_for_status(api, created["task_id"], "completed")
    assert task["verification"]["status"] == "skipped" and task["verify"] == "none"


async def test_a_passed_verdict_delivers_the_result(tmp_path: Path):
    async with running_app(tmp_path / "api.db", coordinator=TRUSTING) as api:
        async with fake_worker(api, "worker") as worker:
            created = await api.submit({"prompt": "what is 2+2", "verify": "always"})
            task_id = created["task_id"]
            await worker.finish((await worker.next_assign())["task_id"], "4")
            # held: no validator yet; the task is still running, its verification pending
            task = await wait_for_status(api, task_id, "running")
            with trio.fail_after(5):
                while task["verification"]["status"] != "pending" or \
                        task["verification"]["producer"] is None:
                    task = (await (await api.client.get(f"/api/tasks/{task_id}")).get_json()
                            )["task"]
                    await trio.sleep(0.01)
            assert task["result"] is None
            async with fake_worker(api, "validator") as validator:
                job = await validator.next_assign()  # the waiting job, on the new validator
                assert job["verify"] == {"claimed": "4", "proof": None}
                assert job["input"]["prompt"] == "what is 2+2"
                await verdict(validator, job["task_id"], True, "consistent")
                task = await wait_for_status(api, task_id, "completed")
    assert task["result"] == "4" and task["cost"] > 0
    verification = task["verification"]
    assert verification["status"] == "passed" and verification["validator"] == validator.node_id
    assert verification["producer"] == worker.node_id and verification["score"] == 1.0
    assert not verification["rerun"]


async def test_a_failed_verdict_reruns_the_task_and_quarantines_its_node(tmp_path: Path):
    async with running_app(tmp_path / "api.db", coordinator=TRUSTING) as api:
        async with fake_worker(api, "worker") as worker:
            created = await api.submit({"prompt": "what is 2+2", "verify": "always"})
            task_id = created["task_id"]
            await worker.finish((await worker.next_assign())["task_id"], "5")  # wrong
            async with fake_worker(api, "validator") as validator:
                job = await validator.next_assign()
                await verdict(validator, job["task_id"], False, "the claimed tokens are unlikely")
                # run again, never on its producer: here on the validator (operator-
                # trusted: its own result is taken as it is)
                rerun = await validator.next_assign()
                assert rerun["task_id"] == task_id and rerun.get("verify") is None
                await validator.finish(task_id, "4")
                task = await wait_for_status(api, task_id, "completed")
                status = await (await api.client.get("/api/network/status")).get_json()
                # what the dashboard's page renders (its event stream sends the same)
                dashboard = await (await api.client.get("/api/network/dashboard")).get_json()
                families = await scrape(api)
                # the worker's operator is told why
                with trio.fail_after(5):
                    while True:
                        frame = json.loads(await worker.ws.receive())
                        if frame["type"] == "error":
                            break
    assert task["result"] == "4" and task["node"]["id"] == validator.node_id
    verification = task["verification"]
    assert verification["status"] == "skipped" and verification["rerun"] is True
    [failed] = verification["failed_results"]
    assert failed["producer"] == worker.node_id and failed["validator"] == validator.node_id
    assert failed["detail"] == "the claimed tokens are unlikely"
    nodes = {n["id"]: n for n in status["nodes"]}
    assert nodes[worker.node_id]["quarantined"] is True
    assert nodes[worker.node_id]["status"] == "quarantined"
    assert nodes[worker.node_id]["reputation"]["failed"] == 1
    assert nodes[worker.node_id]["reputation"]["score"] == round(1 / 3, 4)
    assert nodes[validator.node_id]["reputation"]["validator"] is True
    # a node that is not operator-trusted is limited (probation), a trusted one is not
    assert nodes[worker.node_id]["reputation"]["probation_limit"] == 2
    assert nodes[validator.node_id]["reputation"]["probation_limit"] is None
    assert "quarantined" in frame["message"]
    # the dashboard lists the quarantined node as such (styled status-quarantined)
    shown = {n["id"]: n for n in dashboard["nodes"]}
    assert (shown[worker.node_id]["status"], shown[worker.node_id]["quarantined"]) == (
        "quarantined", True)
    assert shown[validator.node_id]["status"] == "online"
    # the operator-trusted validator is told apart from a node on probation
    assert nodes[validator.node_id]["reputation"]["trusted"] is True
    assert nodes[worker.node_id]["reputation"]["trusted"] is False
    assert shown[validator.node_id]["reputation"]["trusted"] is True
    # both are connected (`nodes_online`, as the reference counts), but the
    # quarantined one takes no work: counted apart, in the API and the dashboard
    assert status["network"]["nodes_online"] == 2
    by_status = {"online": 1, "draining": 0, "quarantined": 1, "offline": 0}
    assert status["network"]["nodes_by_status"] == by_status
    assert dashboard["network"]["nodes_by_status"] == by_status
    # and Prometheus counts only the node taking work
    assert value(families, "neurogrid_nodes_online", "neurogrid_nodes_online",
                 gpu="RTX 4090") == 1


async def test_the_v1_routes_take_verify(api):
    async with fake_worker(api, "worker") as worker:
        response = await api.client.post("/v1/chat/completions", json={
            "model": "llama2", "messages": [{"role": "user", "content": "hi"}],
            "verify": "sometimes"})
        assert response.status_code == 400
        error = (await response.get_json())["error"]
        assert error["param"] == "verify" and "none, sampled, always" in error["message"]
        async with trio.open_nursery() as nursery:
            async def answer() -> None:
                assign = await worker.next_assign()
                await worker.finish(assign["task_id"], "hello")
            nursery.start_soon(answer)
            response = await api.client.post("/v1/chat/completions", json={
                "model": "llama2", "messages": [{"role": "user", "content": "hi"}],
                "verify": "none"})
        assert response.status_code == 200, await response.get_data()
        task_id = response.headers["X-NeuroGrid-Task-Id"]
        task = (await (await api.client.get(f"/api/tasks/{task_id}")).get_json())["task"]
    assert task["verify"] == "none" and task["verification"]["status"] == "skipped"


async def test_the_image_and_transcription_routes_take_verify(api):
    from quart.datastructures import FileStorage

    from tests.api.test_openai_compat import EchoAudioRunner, wav_bytes

    refused = await api.client.post("/v1/images/generations", json={
        "prompt": "a red fox", "verify": "sometimes"})
    assert refused.status_code == 400
    error = (await refused.get_json())["error"]
    assert error["param"] == "verify" and "none, sampled, always" in error["message"]

    def audio() -> dict[str, Any]:
        return {"file": FileStorage(io.BytesIO(wav_bytes()), "a.wav", "file", "audio/wav")}

    for bad in ("sometimes", ""):
        refused = await api.client.post("/v1/audio/transcriptions", form={
            "model": "whisper", "verify": bad}, files=audio())
        assert refused.status_code == 400, bad
        error = (await refused.get_json())["error"]
        assert error["param"] == "verify", (bad, error)
        assert "none, sampled, always" in error["message"]  # checked, not unsupported
    async with agent_worker(api, {"whisper": EchoAudioRunner()}):
        with trio.fail_after(30):
            response = await api.client.post("/v1/audio/transcriptions", form={
                "model": "whisper", "verify": "none"}, files=audio())
        assert response.status_code == 200, await response.get_data()
        task_id = response.headers["X-NeuroGrid-Task-Id"]
        task = (await (await api.client.get(f"/api/tasks/{task_id}")).get_json())["task"]
    assert task["verify"] == "none" and task["verification"]["status"] == "skipped"


def test_an_image_request_carries_verify_into_its_task():
    from api.openai_schema import parse_image
    assert parse_image({"prompt": "x", "verify": "always"}).task["verify"] == "always"
    assert "verify" not in parse_image({"prompt": "x"}).task  # the task's default: sampled
