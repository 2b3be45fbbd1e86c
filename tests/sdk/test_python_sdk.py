"""The Python SDK (sdk/python, import name `neurogrid`) against a live server, and
its retries and downloads against a scripted stub server on 127.0.0.1 (a server
cannot be made to refuse or drop on cue). The demo model's text is not
meaningful: the tests compare what the SDK returns with the task as stored."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytest.importorskip("neurogrid", reason="the Python SDK is not installed in this environment: "
                    "pip install ./sdk/python")

from neurogrid import (  # noqa: E402
    AsyncNeuroGrid, BadRequestError, ConflictError, IDEMPOTENCY_HEADER, NeuroGrid,
    NeuroGridConnectionError, NeuroGridTimeoutError, NotFoundError, RateLimitError, RetryPolicy,
    TaskFailedError,
)
from neurogrid.protocol import task_body  # noqa: E402
from neurogrid.sse import EventParser  # noqa: E402

from .stubs import DROP, Answer, serve_stub  # noqa: E402

# The API reference's snippet, character for character.
REFERENCE_SNIPPET = '''from neurogrid import NeuroGrid
client = NeuroGrid()
result = client.submit_task(
prompt="Hello world",
model="llama2"
)
print(result.get_response())
'''
BLOCKER_TOKENS = 500  # a task that holds the one slot for ~1 s
FAST = RetryPolicy(max_retries=3, backoff_base=0.05, backoff_max=0.2)


def submission(task_id: str) -> dict[str, object]:
    return {"success": True, "task_id": task_id, "status": "queued", "estimated_time": "3s",
            "cost": {"estimated": "$0.001", "comparison": {"openai": "$0.060",
                                                           "savings": "98.3%"}},
            "message": "Task queued for processing"}


def task_view(task_id: str, result: str) -> dict[str, object]:
    return {"id": task_id, "status": "completed", "result": result,
            "created_at": "2024-10-25T15:30:00Z", "completed_at": "2024-10-25T15:30:03Z",
            "processing_time": 2.3, "cost": 0.001, "tokens_used": 1, "node": None}


def sse(kind: str, data: object) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


# ---- against the live server ---------------------------------------------------


def test_the_reference_snippet_prints_the_task_result(live_server: str) -> None:
    with NeuroGrid(live_server) as client:
        before = {t["id"] for t in client.list_tasks(limit=100)["tasks"]}
        run = subprocess.run([sys.executable, "-c", REFERENCE_SNIPPET], capture_output=True,
                             text=True, timeout=120,
                             env={**os.environ, "NEUROGRID_BASE_URL": live_server})
        assert run.returncode == 0, run.stderr
        new = [t for t in client.list_tasks(limit=100)["tasks"] if t["id"] not in before]
        assert len(new) == 1
        stored = client.get_task(new[0]["id"])
    assert stored["status"] == "completed" and stored["model"] == "llama2:7b"
    assert stored["result"] and run.stdout == stored["result"] + "\n"


def test_a_handle_waits_reports_cost_and_status(live_server: str) -> None:
    with NeuroGrid(live_server) as client:
        task = client.submit_task(prompt="Hello world", model="llama2", max_tokens=20)
        assert task.task_id.startswith("task_")
        assert task.cost.estimated is not None and task.cost.estimated.startswith("$")
        assert task.cost.actual_usd is None  # not ended yet, as far as the handle knows
        text = task.get_response(timeout=60)
        stored = client.get_task(task.task_id)
        assert text == stored["result"]
        assert task.status() == "completed" and task.done
        assert task.cost.actual_usd == stored["cost"] and stored["cost"] > 0
        assert task.wait()["tokens_used"] == stored["tokens_used"]


def test_stream_yields_the_tokens_that_make_up_the_result(live_server: str) -> None:
    with NeuroGrid(live_server) as client:
        blocker = client.submit_task(prompt="keep busy", max_tokens=BLOCKER_TOKENS)
        # the one slot is busy: ours queues, and its stream is open before it runs
        task = client.submit_task(prompt="Hello world", model="llama2", max_tokens=120)
        tokens = list(task.stream(timeout=60))
        assert blocker.done is False and blocker.status() == "completed"
        stored = client.get_task(task.task_id)
        assert stored["status"] == "completed"
        assert len(tokens) > 1 and "".join(tokens) == stored["result"]
        assert task.last == stored  # the stream's `done` event is the stored task


def test_a_stream_opened_after_the_task_ended_still_adds_up_to_the_result(
        live_server: str) -> None:
    with NeuroGrid(live_server) as client:
        task = client.submit_task(prompt="Hello world", model="llama2", max_tokens=8)
        stored = task.wait(timeout=60)
        assert stored["status"] == "completed"
        # a fresh handle: its stream opens on an ended task (no token is replayed)
        again = client.task(task.task_id)
        assert list(again.stream(timeout=30)) == [stored["result"]]


def test_cancel_a_queued_task(live_server: str) -> None:
    with NeuroGrid(live_server) as client:
        blocker = client.submit_task(prompt="keep busy", max_tokens=BLOCKER_TOKENS)
        task = client.submit_task(prompt="never run", max_tokens=50)
        assert task.cancel()["status"] == "cancelled"
        assert task.status() == "cancelled"
        with pytest.raises(ConflictError) as again:
            task.cancel()
        assert again.value.status_code == 409 and "cancelled" in again.value.details
        with pytest.raises(TaskFailedError) as failed:
            task.get_response(timeout=30)
        assert failed.value.status == "cancelled"
        try:
            blocker.cancel()  # not to slow the next tests down
        except ConflictError:
            pass  # it had ended


def test_a_400_raises_the_typed_error_with_details(live_server: str) -> None:
    with NeuroGrid(live_server) as client:
        with pytest.raises(BadRequestError) as missing:
            client.submit_task(model="llama2")
        assert missing.value.status_code == 400
        assert missing.value.details == "The 'prompt' field is required"
        assert missing.value.body["success"] is False and missing.value.timestamp
        with pytest.raises(BadRequestError) as unknown:
            client.submit_task(prompt="x", extra={"colour": "blue"})
        assert "colour" in unknown.value.details
        with pytest.raises(NotFoundError):
            client.task("task_0_nosuchtask").status()


def test_the_other_calls(live_server: str) -> None:
    with NeuroGrid(live_server) as client:
        assert client.health()["status"] == "OK"
        assert client.network_status()["network"]["nodes_online"] == 1
        models = {m["id"]: m for m in client.models()["models"]}
        assert models["llama2:7b"]["available"] and "llama2" in models["llama2:7b"]["aliases"]
        email = f"sdk-{uuid.uuid4().hex[:8]}@example.com"
        first = client.beta_signup(email, type="developer", source="website")
        assert first["signup_id"].startswith("beta_") and first["bonuses"]["free_tasks"] == 1000
        assert client.beta_signup(email)["signup_id"] == first["signup_id"]
        page = client.list_tasks(limit=1)
        assert page["count"] == 1 and page["next_cursor"] is not None
        older = client.list_tasks(limit=1, cursor=page["next_cursor"])
        assert older["tasks"][0]["id"] != page["tasks"][0]["id"]


async def test_the_async_client_has_the_same_surface(live_server: str) -> None:
    async with AsyncNeuroGrid(live_server) as client:
        blocker = await client.submit_task(prompt="keep busy", max_tokens=BLOCKER_TOKENS)
        task = await client.submit_task(prompt="Hello world", model="llama2", max_tokens=60)
        tokens = [token async for token in task.stream(timeout=60)]
        assert await blocker.status() == "completed"
        stored = await client.get_task(task.task_id)
        assert "".join(tokens) == stored["result"] == await task.get_response()
        assert await task.status() == "completed"
        with pytest.raises(BadRequestError):
            await client.submit_task(model="llama2")
        assert (await client.health())["status"] == "OK"


# ---- retries and downloads, against a stub server ------------------------------


def test_429_is_retried_after_retry_after() -> None:
    limited = Answer.json(429, {"success": False, "error": "Rate limit exceeded",
                                "details": "100 submissions per hour", "timestamp": "x"},
                          **{"Retry-After": "1"})
    with serve_stub({"/api/tasks": [limited, Answer.json(200, submission("task_1_a"))]}) as stub:
        task = NeuroGrid(stub.url, retry=FAST).submit_task(prompt="Hello world")
    assert task.task_id == "task_1_a"
    first, second = stub.seen
    assert second.at - first.at >= 1.0  # waited for Retry-After, not the 0.05 s backoff
    assert first.headers[IDEMPOTENCY_HEADER.lower()] == second.headers[IDEMPOTENCY_HEADER.lower()]


def test_a_long_retry_after_raises_the_rate_limit_error_at_once() -> None:
    limited = Answer.json(429, {"success": False, "error": "Rate limit exceeded",
                                "details": "100 submissions per hour", "timestamp": "x"},
                          **{"Retry-After": "3600"})
    with serve_stub({"/api/tasks": [limited]}) as stub:
        with pytest.raises(RateLimitError) as raised:
            NeuroGrid(stub.url, retry=FAST).submit_task(prompt="Hello world")
    assert len(stub.seen) == 1
    assert raised.value.details == "100 submissions per hour"
    assert raised.value.retry_after == "3600" and raised.value.status_code == 429


def test_a_submit_retried_after_a_dropped_connection_reuses_its_idempotency_key() -> None:
    with serve_stub({"/api/tasks": [DROP, Answer.json(200, submission("task_1_b"))]}) as stub:
        client = NeuroGrid(stub.url, retry=FAST)
        task = client.submit_task(prompt="Hello world")
        other = client.submit_task(prompt="Hello world")
    assert task.task_id == other.task_id == "task_1_b"
    keys = [seen.headers[IDEMPOTENCY_HEADER.lower()] for seen in stub.seen]
    assert len(keys) == 3 and keys[0] == keys[1] != keys[2]  # a new submit: a new key
    assert uuid.UUID(keys[0]).version == 4
    assert json.loads(stub.seen[0].body) == json.loads(stub.seen[1].body)


async def test_the_async_client_retries_a_dropped_submit_with_the_same_key() -> None:
    limited = Answer.json(429, {"success": False, "error": "Rate limit exceeded",
                                "details": "10 tasks in flight", "timestamp": "x"},
                          **{"Retry-After": "0"})
    script = {"/api/tasks": [DROP, limited, Answer.json(200, submission("task_1_c"))]}
    with serve_stub(script) as stub:
        async with AsyncNeuroGrid(stub.url, retry=FAST) as client:
            task = await client.submit_task(prompt="Hello world")
    assert task.task_id == "task_1_c"
    assert len({seen.headers[IDEMPOTENCY_HEADER.lower()] for seen in stub.seen}) == 1
    assert len(stub.seen) == 3


def test_connection_errors_are_retried_then_raised() -> None:
    with serve_stub({"/health": [DROP]}) as stub:
        with pytest.raises(NeuroGridConnectionError) as raised:
            NeuroGrid(stub.url, retry=FAST).health()
    assert len(stub.seen) == FAST.max_retries + 1
    assert isinstance(raised.value, ConnectionError)


def test_waiting_reopens_a_stream_that_closed_before_the_task_ended() -> None:
    stream = "/api/tasks/task_1_s/stream"
    first = Answer(200, sse("status", {"status": "running"}) + sse("progress", {
        "tokens": ["Hel"], "index": 0}), {"Content-Type": "text/event-stream"})
    # the reopened stream replays all the text so far: only its new part is yielded
    second = Answer(200, sse("status", {"status": "running"}) + sse("progress", {
        "tokens": ["Hel", "lo"], "index": 1, "replayed": True}) + sse("progress", {
        "tokens": [" world"], "index": 2}) + sse("done", task_view("task_1_s", "Hello world")),
        {"Content-Type": "text/event-stream"})
    with serve_stub({stream: [first, second]}) as stub:
        task = NeuroGrid(stub.url, retry=FAST).task("task_1_s")
        assert list(task.stream(timeout=10)) == ["Hel", "lo", " world"]
        assert task.get_response() == "Hello world"  # seen ended: no third request
    assert [seen.path for seen in stub.seen] == [stream, stream]


def test_a_wait_past_its_timeout_raises_the_timeout_error() -> None:
    silent = Answer(200, sse("done", task_view("task_1_slow", "late")),
                    {"Content-Type": "text/event-stream"}, delay=3.0)
    with serve_stub({"/api/tasks/task_1_slow/stream": [silent]}) as stub:
        with pytest.raises(NeuroGridTimeoutError) as raised:
            NeuroGrid(stub.url, retry=FAST).task("task_1_slow").wait(timeout=0.3)
    assert isinstance(raised.value, TimeoutError)


def test_an_image_result_is_downloaded_and_saved(tmp_path: Path) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
    with serve_stub({}) as elsewhere, serve_stub({}) as stub:
        image = Answer(200, png, {"Content-Type": "image/png"})
        done = task_view("task_1_img", "/files/task_1_img/image.png")
        stub.script["/api/tasks/task_1_img/stream"] = [Answer(
            200, sse("status", {"status": "running"}) + sse("done", done),
            {"Content-Type": "text/event-stream"})]
        stub.script["/files/task_1_img/image.png"] = [image]
        elsewhere.script["/image.png"] = [image]
        stub.script["/api/tasks/task_1_far"] = [Answer.json(200, {
            "success": True, "task": task_view("task_1_far", elsewhere.url + "/image.png")})]
        client = NeuroGrid(stub.url, api_key="ng_secret")
        saved = client.task("task_1_img").save(tmp_path / "out.png", timeout=10)
        far = client.task("task_1_far")
        far.refresh()
        assert far.image_bytes() == png
    assert saved.read_bytes() == png
    assert stub.seen[-1].headers["authorization"] == "Bearer ng_secret"
    assert "authorization" not in elsewhere.seen[0].headers  # the key stays with its server


def test_a_text_result_is_not_taken_for_an_image() -> None:
    with serve_stub({"/api/tasks/task_1_t": [Answer.json(200, {
            "success": True, "task": task_view("task_1_t", "just words")})]}) as stub:
        task = NeuroGrid(stub.url).task("task_1_t")
        task.refresh()
        with pytest.raises(Exception, match="not an image URL"):
            task.image_bytes()


def test_audio_goes_base64_in_the_audio_field(tmp_path: Path) -> None:
    wav = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(32)
    (tmp_path / "hello.wav").write_bytes(wav)
    with serve_stub({"/api/tasks": [Answer.json(200, submission("task_1_w"))]}) as stub:
        client = NeuroGrid(stub.url)
        client.submit_task(prompt="transcribe", model="whisper", audio=tmp_path / "hello.wav")
        client.submit_task(model="whisper", audio=wav)
    from_path, from_bytes = (json.loads(seen.body) for seen in stub.seen)
    assert from_path == {"prompt": "transcribe", "model": "whisper",
                         "audio": base64.b64encode(wav).decode()}
    assert from_bytes == {"model": "whisper", "audio": base64.b64encode(wav).decode()}


# ---- the pure parts ------------------------------------------------------------


def test_task_body_sends_only_given_fields_and_refuses_a_doubled_one() -> None:
    assert task_body("hi", "llama2", max_tokens=5, temperature=0.0) == {
        "prompt": "hi", "model": "llama2", "max_tokens": 5, "temperature": 0.0}
    with pytest.raises(ValueError, match="'model'"):
        task_body("hi", "llama2", extra={"model": "whisper"})


def test_the_event_parser_handles_split_chunks_and_line_endings() -> None:
    stream = (b": keep-alive\r\n\r\nevent: progress\r\ndata: {\"tokens\": [\"h\\u00e9\"]}\r\n\r\n"
              b"event: done\ndata: {\"id\": \"t\",\ndata: \"status\": \"completed\"}\n\n")
    parser = EventParser()
    events = [event for i in range(len(stream)) for event in parser.feed(stream[i:i + 1])]
    assert events == [{"event": "progress", "data": {"tokens": ["hé"]}},
                      {"event": "done", "data": {"id": "t", "status": "completed"}}]


def test_retry_policy_decisions() -> None:
    policy = RetryPolicy(max_retries=2, backoff_base=1.0, backoff_max=3.0, max_retry_after=10)
    assert [policy.after_failure(n, 0.0) for n in range(3)] == [0.5, 1.0, None]
    assert [policy.after_failure(n, 0.999) for n in range(2)] == pytest.approx([0.9995, 1.999])
    assert policy.backoff(5, 1.0) == 3.0  # capped
    assert policy.after_status(0, 429, {"retry-after": "7"}, 0.0, 0.0) == 7.0
    assert policy.after_status(0, 429, {"retry-after": "11"}, 0.0, 0.0) is None
    date = "Wed, 21 Oct 2015 07:28:05 GMT"  # 1445412485
    assert policy.after_status(0, 503, {"retry-after": date}, 1445412480.0, 0.0) == 5.0
    assert policy.after_status(0, 429, {}, 0.0, 0.0) == 0.5
    assert policy.after_status(0, 400, {}, 0.0, 0.0) is None
    assert policy.after_status(2, 429, {"retry-after": "1"}, 0.0, 0.0) is None
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)


def test_configuration_comes_from_arguments_then_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEUROGRID_BASE_URL", "http://example.test:9000/")
    monkeypatch.setenv("NEUROGRID_API_KEY", "ng_env")
    assert NeuroGrid().config.base_url == "http://example.test:9000"
    assert NeuroGrid().config.api_key == "ng_env"
    assert NeuroGrid("http://other.test", api_key="ng_arg").config.api_key == "ng_arg"
    monkeypatch.delenv("NEUROGRID_BASE_URL")
    monkeypatch.delenv("NEUROGRID_API_KEY")
    assert NeuroGrid().config.base_url == "http://127.0.0.1:8080"
    assert NeuroGrid().config.api_key is None
    with pytest.raises(ValueError, match="base_url"):
        NeuroGrid("127.0.0.1:8080")
