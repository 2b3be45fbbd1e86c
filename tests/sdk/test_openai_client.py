"""The official `openai` Python package against the live server's /v1 routes
(base_url=http://127.0.0.1:PORT/v1, a NeuroGrid key as its API key): models,
chat completions streamed and not, errors as the package's typed exceptions. The
local worker runs the demo model: its text is not meaningful, so the tests compare
texts, not meanings. And a submit retried after its connection dropped, over raw
sockets, creates one task."""
from __future__ import annotations

import json
import socket
import time
from typing import Any, Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.live_server import LiveServer, create_key

openai = pytest.importorskip("openai", reason="the openai package is a test extra: "
                             "pip install -e '.[test]'")


@pytest.fixture
def client(live_server: str, live_server_key: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{live_server}/v1", api_key=live_server_key,
                       max_retries=0, timeout=60) as oa:
        yield oa


def test_the_models_are_listed(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert {"llama2:7b", "llama2", "stable-diffusion", "whisper"} <= set(ids)
    assert client.models.retrieve("llama2").id == "llama2"


def test_a_streamed_chat_assembles_to_the_text_of_a_plain_one(client: openai.OpenAI,
                                                              live_server: str,
                                                              live_server_key: str) -> None:
    request = {"model": "llama2", "max_tokens": 20, "seed": 11, "temperature": 0.9,
               "messages": [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "Hello world"}]}
    whole = client.chat.completions.create(**request)  # type: ignore[call-overload]
    text = whole.choices[0].message.content
    assert whole.object == "chat.completion" and whole.model == "llama2:7b" and text
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage is not None and whole.usage.completion_tokens > 0
    pieces, usage = [], None
    stream = client.chat.completions.create(  # type: ignore[call-overload]
        **request, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(pieces) == text
    assert usage is not None and usage.total_tokens == whole.usage.total_tokens
    # Both calls are tasks of this key, with the chat as their prompt.
    listing = httpx.get(f"{live_server}/api/tasks", params={"limit": 2},
                        headers={"Authorization": f"Bearer {live_server_key}"}).json()
    prompts = {t["id"]: t["params"] for t in listing["tasks"]}
    assert whole.id.removeprefix("chatcmpl-") in prompts


def test_a_completion(client: openai.OpenAI) -> None:
    done = client.completions.create(model="llama2:7b", prompt="Once upon", max_tokens=8,
                                     seed=2)
    assert done.object == "text_completion" and done.choices[0].text


def test_what_neurogrid_cannot_do_is_a_bad_request_naming_the_parameter(
        client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="llama2", messages=messages,  # type: ignore
                                       logprobs=True)
    assert refused.value.param == "logprobs" and refused.value.status_code == 400
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="llama2", messages=messages, n=2)  # type: ignore
    assert refused.value.param == "n"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-9", messages=messages)  # type: ignore
    assert missing.value.code == "model_not_found"


def test_a_wrong_key_is_an_authentication_error(live_server: str) -> None:
    with openai.OpenAI(base_url=f"{live_server}/v1", api_key="ng_wrong",
                       max_retries=0) as oa, pytest.raises(openai.AuthenticationError):
        oa.models.list()


# ---- a submit retried after its connection dropped --------------------------------


def raw_submit(url: str, body: bytes, key: str, secret: str,
               read: bool) -> tuple[bytes, dict[str, Any]] | None:
    """POST /api/tasks on a fresh connection; with read=False, close before reading
    the answer (a connection that drops). The answer's head and body."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(b"POST /api/tasks HTTP/1.1\r\nHost: %s\r\n"
                     b"Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                     b"Idempotency-Key: %s\r\nContent-Length: %d\r\nConnection: close\r\n"
                     b"\r\n%s" % (parts.netloc.encode(), secret.encode(), key.encode(),
                                  len(body), body))
        if not read:
            return None
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        head, _, payload = answer.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(payload) < length:
            payload += sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 200"), answer
    return head, json.loads(payload)


def test_a_submit_retried_after_the_connection_dropped_is_one_task(live: LiveServer) -> None:
    secret = create_key(live.db, name="dropped-connection")
    auth = {"Authorization": f"Bearer {secret}"}

    def tasks() -> list[str]:
        answer = httpx.get(f"{live.url}/api/tasks", headers=auth).json()
        assert "tasks" in answer, answer
        return [t["id"] for t in answer["tasks"]]

    body = json.dumps({"prompt": "Hello world", "max_tokens": 4}).encode()
    raw_submit(live.url, body, "submit-1", secret, read=False)
    deadline = time.monotonic() + 5  # the first request's task, committed meanwhile
    while not tasks() and time.monotonic() < deadline:
        time.sleep(0.05)
    stored_first = bool(tasks())
    answer = raw_submit(live.url, body, "submit-1", secret, read=True)
    assert answer is not None
    head, second = answer
    assert tasks() == [second["task_id"]]  # exactly one task, the one answered
    if stored_first:  # the usual case: the retry is answered from the key
        assert b"idempotent-replayed: true" in head.lower()
