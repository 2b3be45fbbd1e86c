"""The OpenAI-compatible API (/v1), in process: a real worker agent running the
demo text model (its text is not meaningful: tests compare texts, not meanings)
or the tiny random-weight image pack, over Quart's test client. The official
`openai` client against a live server is in tests/sdk/test_openai_client.py."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any, AsyncIterator, Mapping

import attrs

import pytest
import trio
from PIL import Image

from api.openai_schema import StopScanner, apply_stops, chat_prompt
from engine.worker.packs.sd_tiny import ensure_sd_tiny
from engine.worker.runners import RunResult, load_runner
from engine.worker.runners.demo_pack import ensure_demo_pack
from tests.api.conftest import Harness, agent_worker, running_app


@pytest.fixture(scope="module")
def text_runner(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pack = ensure_demo_pack(tmp_path_factory.mktemp("packs") / "demo")
    return load_runner("llama2:7b", pack, providers_preference="cpu")


@pytest.fixture
async def served(tmp_path: Path, text_runner: Any) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "api.db") as harness, agent_worker(
            harness, {"llama2:7b": text_runner}):
        yield harness


async def post(harness: Harness, path: str, body: Any, **headers: str) -> Any:
    return await harness.client.post(path, json=body, headers=headers)


def events(raw: bytes) -> list[Any]:
    """The `data:` payloads of an OpenAI event stream, [DONE] as the string."""
    out = []
    for frame in raw.decode().split("\n\n"):
        if frame.startswith("data: "):
            data = frame[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


CHAT = {"model": "llama2", "messages": [{"role": "user", "content": "Hello world"}],
        "max_tokens": 24, "seed": 3, "temperature": 0.8}


async def test_a_chat_completion_is_a_task_and_streams_the_same_text(served: Harness) -> None:
    response = await post(served, "/v1/chat/completions", CHAT)
    assert response.status_code == 200, await response.get_data()
    body = await response.get_json()
    task_id = response.headers["X-NeuroGrid-Task-Id"]
    assert body["id"] == f"chatcmpl-{task_id}" and body["object"] == "chat.completion"
    assert body["model"] == "llama2:7b" and isinstance(body["created"], int)
    [choice] = body["choices"]
    text = choice["message"]["content"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant" and text
    assert choice["finish_reason"] in ("stop", "length")
    task = (await (await served.client.get(f"/api/tasks/{task_id}")).get_json())["task"]
    assert task["status"] == "completed" and task["result"] == text
    assert task["params"]["seed"] == 3 and task["params"]["max_tokens"] == 24
    counts = body["usage"]
    assert counts["total_tokens"] == task["tokens_used"] == (
        counts["prompt_tokens"] + counts["completion_tokens"])
    assert counts["prompt_tokens"] > 0 and counts["completion_tokens"] > 0

    streamed = await post(served, "/v1/chat/completions",
                          {**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    assert streamed.status_code == 200
    assert streamed.content_type.startswith("text/event-stream")
    frames = events(await streamed.get_data())
    assert frames[-1] == "[DONE]"
    chunks = frames[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks
                   if c["choices"]) == text
    assert chunks[-2]["choices"][0]["finish_reason"] == choice["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-2])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == counts
    assert all(c["usage"] is None for c in chunks[:-1])
    listing = await (await served.client.get("/api/tasks")).get_json()
    assert listing["count"] == 2  # each call is one task


async def test_stop_sequences_cut_the_text_streamed_or_not(served: Harness) -> None:
    whole = await (await post(served, "/v1/completions", {
        "model": "llama2:7b", "prompt": "Hello world", "max_tokens": 24, "seed": 1})).get_json()
    text = whole["choices"][0]["text"]
    assert whole["object"] == "text_completion" and len(text) > 6
    stop = text[3:6]
    cut = await (await post(served, "/v1/completions", {
        "model": "llama2:7b", "prompt": "Hello world", "max_tokens": 24, "seed": 1,
        "stop": [stop, "never-there"]})).get_json()
    assert cut["choices"][0]["text"] == text[:text.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    streamed = events(await (await post(served, "/v1/completions", {
        "model": "llama2:7b", "prompt": "Hello world", "max_tokens": 24, "seed": 1,
        "stop": stop, "stream": True})).get_data())
    assert "".join(c["choices"][0]["text"] for c in streamed[:-1]) == text[:text.index(stop)]
    assert streamed[-2]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("body, param", [
    ({"logprobs": True}, "logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"n": 2}, "n"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"top_k": 3}, "top_k"),
    ({"temperature": 3}, "temperature"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[0].content"),
    ({"model": "stable-diffusion"}, "model"),
])
async def test_what_neurogrid_cannot_do_is_a_400_naming_the_parameter(
        api: Harness, body: dict[str, Any], param: str) -> None:
    response = await post(api, "/v1/chat/completions", {**CHAT, **body})
    assert response.status_code == 400
    error = (await response.get_json())["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["message"]
    assert (await api.services.store.stats()).total_tasks == 0


async def test_neutral_values_of_unsupported_parameters_are_accepted(served: Harness) -> None:
    response = await post(served, "/v1/chat/completions", {
        **CHAT, "presence_penalty": 0, "frequency_penalty": 0, "n": 1, "logprobs": False,
        "user": "someone"})
    assert response.status_code == 200
    assert (await served.services.store.stats()).total_tasks == 1


async def test_errors_come_in_openai_shape(api: Harness) -> None:
    unknown = await post(api, "/v1/chat/completions", {**CHAT, "model": "gpt-9"})
    assert unknown.status_code == 404
    error = (await unknown.get_json())["error"]
    assert (error["type"], error["param"], error["code"]) == (
        "not_found_error", "model", "model_not_found")
    assert "llama2:7b" in error["message"]
    bad_key = await post(api, "/v1/chat/completions", CHAT, Authorization="Bearer nope")
    assert bad_key.status_code == 401
    assert (await bad_key.get_json())["error"]["type"] == "authentication_error"
    route = await api.client.get("/v1/nothing/here")
    assert route.status_code == 404
    assert (await route.get_json())["error"]["message"] == "Invalid URL (GET /v1/nothing/here)"
    method = await api.client.get("/v1/chat/completions")
    assert method.status_code == 405 and "error" in await method.get_json()
    not_json = await api.client.post("/v1/completions", data=b"{nope",
                                     headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400
    assert (await not_json.get_json())["error"]["type"] == "invalid_request_error"
    # The rest of the API keeps the reference's error object.
    reference = await api.client.get("/api/tasks/task_0_nope")
    assert (await reference.get_json())["success"] is False


async def test_a_rate_limited_call_is_a_429_with_retry_after(api: Harness) -> None:
    now = api.clock()
    secret, _ = await api.services.store.create_key("beta", "tight", 1, 5, now)
    auth = {"Authorization": f"Bearer {secret}"}
    first = await post(api, "/api/tasks", {"prompt": "x"}, **auth)  # spends the hour's one
    assert first.status_code == 200
    second = await post(api, "/v1/chat/completions", CHAT, **auth)
    assert second.status_code == 429 and int(second.headers["Retry-After"]) >= 1
    error = (await second.get_json())["error"]
    assert error["type"] == "rate_limit_error" and "per hour" in error["message"]


async def test_models_lists_the_catalog_and_its_aliases(api: Harness) -> None:
    body = await (await api.client.get("/v1/models")).get_json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert {"llama2:7b", "llama2", "stable-diffusion", "whisper"} <= set(ids)
    assert all(m["object"] == "model" and m["owned_by"] == "neurogrid" for m in body["data"])
    one = await (await api.client.get("/v1/models/llama2:7b")).get_json()
    assert one["id"] == "llama2:7b"
    assert (await api.client.get("/v1/models/gpt-9")).status_code == 404


async def test_a_repeated_call_with_an_idempotency_key_is_one_task(served: Harness) -> None:
    headers = {"Idempotency-Key": "chat-1"}
    first = await post(served, "/v1/chat/completions", CHAT, **headers)
    again = await post(served, "/v1/chat/completions", CHAT, **headers)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await again.get_json())["id"] == (await first.get_json())["id"]
    other = await post(served, "/v1/chat/completions", {**CHAT, "seed": 4}, **headers)
    assert other.status_code == 409
    assert (await other.get_json())["error"]["code"] == "idempotency_key_reused"
    # The same key on another route is another request, not a repeat.
    elsewhere = await post(served, "/api/tasks", {"prompt": "Hello world"}, **headers)
    assert elsewhere.status_code == 409
    assert (await (await served.client.get("/api/tasks")).get_json())["count"] == 1


def test_chat_messages_become_one_prompt() -> None:
    assert chat_prompt([{"role": "user", "content": "Hi"}]) == "Hi"
    assert chat_prompt([
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi", "name": "ann"},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
        {"role": "user", "content": "2+2?"},
    ]) == "System: Be terse.\n\nUser (ann): Hi\n\nAssistant: Hello\n\nUser: 2+2?"


@pytest.mark.parametrize("text, stops", [
    ("hello world", ["o w"]), ("abcd", ["abcd", "c"]), ("abc", ["abcd", "c"]),
    ("aaab", ["aab"]), ("no stop here", ["xyz"]), ("edge", ["e"]), ("", ["a"]),
])
def test_a_stream_cut_by_stops_equals_the_whole_text_cut(text: str, stops: list[str]) -> None:
    for size in (1, 2, 3):
        scanner = StopScanner(stops)
        out = "".join(scanner.feed(text[i:i + size]) for i in range(0, len(text), size))
        out += scanner.finish()
        assert (out, scanner.stopped) == apply_stops(text, stops)


# ---- images and audio ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sd_runner(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pack = ensure_sd_tiny(tmp_path_factory.mktemp("packs") / "sd-tiny")
    return load_runner("stable-diffusion", pack, providers_preference="cpu")


async def test_an_image_generation_returns_a_png_or_its_url(sd_runner: Any,
                                                            tmp_path: Path) -> None:
    async with running_app(tmp_path / "api.db") as harness, agent_worker(
            harness, {"stable-diffusion": sd_runner}):
        response = await post(harness, "/v1/images/generations", {
            "prompt": "a red fox", "size": "96x64", "response_format": "b64_json"})
        assert response.status_code == 200, await response.get_data()
        body = await response.get_json()
        image = Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"])))
        assert image.format == "PNG" and image.size == (96, 64)
        by_url = await (await post(harness, "/v1/images/generations", {
            "prompt": "a red fox", "size": "64x64"})).get_json()
        url = by_url["data"][0]["url"]
        assert url.startswith("http") and url.endswith("/image.png")
        for body, param in (({"size": "big"}, "size"), ({"size": "100x64"}, "size"),
                            ({"n": 2}, "n"), ({"quality": "hd"}, "quality"),
                            ({"model": "llama2"}, "model")):
            refused = await post(harness, "/v1/images/generations", {"prompt": "x", **body})
            assert refused.status_code == 400
            assert (await refused.get_json())["error"]["param"] == param


def wav_bytes(seconds: float = 0.5, rate: int = 16000) -> bytes:
    import wave
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"\x00\x00" * int(seconds * rate))
    return out.getvalue()


async def test_a_transcription_request_is_checked(api: Harness) -> None:
    from quart.datastructures import FileStorage
    no_file = await api.client.post("/v1/audio/transcriptions", form={"model": "whisper"})
    assert no_file.status_code == 400
    assert (await no_file.get_json())["error"]["param"] == "file"
    files = {"file": FileStorage(io.BytesIO(wav_bytes()), "a.wav", "file", "audio/wav")}
    for form, param in (({"model": "llama2"}, "model"),
                        ({"model": "whisper", "response_format": "srt"}, "response_format"),
                        ({"model": "whisper", "timestamp_granularities[]": "word"},
                         "timestamp_granularities[]")):
        refused = await api.client.post("/v1/audio/transcriptions", form=form, files=files)
        assert refused.status_code == 400
        assert (await refused.get_json())["error"]["param"] == param


async def test_a_transcription_is_a_whisper_task_with_the_audio(api: Harness) -> None:
    audio = wav_bytes()
    with trio.fail_after(30):
        await transcribe_through_a_worker(api, audio)


async def transcribe_through_a_worker(api: Harness, audio: bytes) -> None:
    from quart.datastructures import FileStorage
    files = {"file": FileStorage(io.BytesIO(audio), "a.wav", "file", "audio/wav")}
    async with agent_worker(api, {"whisper": EchoAudioRunner()}):
        response = await api.client.post(
            "/v1/audio/transcriptions", form={"model": "whisper", "response_format": "json"},
            files=files)
        assert response.status_code == 200, await response.get_data()
        task_id = response.headers["X-NeuroGrid-Task-Id"]
        # The runner got the file as it was sent, and its text is the answer.
        assert (await response.get_json()) == {"text": f"{len(audio)} bytes of audio"}
        text = await api.client.post("/v1/audio/transcriptions", form={
            "model": "whisper", "response_format": "text"}, files={"file": FileStorage(
                io.BytesIO(audio), "a.wav", "file", "audio/wav")})
        assert (await text.get_data()).decode() == f"{len(audio)} bytes of audio\n"
        task = (await (await api.client.get(f"/api/tasks/{task_id}")).get_json())["task"]
        assert task["model"] == "whisper" and task["status"] == "completed"


@attrs.define
class EchoAudioRunner:
    """A speech runner that says how many bytes of audio it was given."""

    model_name: str = "whisper"

    def load(self) -> None:
        return None

    def run(self, inputs: Mapping[str, Any], params: Mapping[str, Any], on_progress: Any,
            should_stop: Any) -> RunResult:
        audio = base64.b64decode(inputs["audio"])
        return RunResult(f"{len(audio)} bytes of audio", {"audio_seconds": 0.5, "seconds": 0.01})

    def unload(self) -> None:
        return None
