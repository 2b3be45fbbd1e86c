# The API as data: each call is a Request plus the function that reads its answer,
# and `exchange` is the retry loop as a generator of steps (send this request,
# sleep this long). Both clients, sync and async, drive the same steps with their
# own I/O (client.py, async_client.py), so request building, retries and response
# parsing are written once, here, and tested without a network.
#
# Rules:
# - A submit carries an `Idempotency-Key` header: one random key per logical
#   submit (the caller's, or a fresh UUID4), the same on every retry of it, so a
#   submit retried after a dropped connection never makes a second task.
# - Only the given fields are sent: the server applies its own defaults and refuses
#   unknown fields with a 400 that names them.
# - Audio (a path or bytes) travels base64-encoded in the JSON body's "audio" field.
# - A 2xx answer is parsed as JSON; anything else raises the typed error of
#   errors.py, after the retries retry.py allows.
from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Generic, Mapping, TypeVar, cast
from urllib.parse import quote

from .config import ClientConfig
from .errors import NeuroGridConnectionError, NeuroGridError, error_from_reply
from .types import (
    BetaSignup, CancelResult, Health, ModelList, NetworkStatus, Submission, TaskPage, TaskView,
)

T = TypeVar("T")
IDEMPOTENCY_HEADER = "Idempotency-Key"
AudioInput = bytes | str | os.PathLike[str]


@dataclass(frozen=True)
class Request:
    method: str
    url: str  # absolute
    headers: Mapping[str, str] = field(default_factory=dict)
    json: Mapping[str, Any] | None = None
    params: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]  # names in lowercase
    body: bytes


@dataclass(frozen=True)
class TransportFailure:
    """The request got no answer: refused, dropped, timed out."""
    error: Exception


@dataclass(frozen=True)
class Send:
    request: Request


@dataclass(frozen=True)
class Sleep:
    seconds: float


Step = Send | Sleep
Outcome = Reply | TransportFailure
Steps = Generator[Step, Outcome | None, T]


@dataclass(frozen=True)
class Call(Generic[T]):
    request: Request
    parse: Callable[[Reply], T]


def exchange(config: ClientConfig, request: Request, wall_clock: Callable[[], float],
             random: Callable[[], float]) -> Steps[Reply]:
    """Send `request` until it gets a final answer; return the 2xx reply, or raise
    the typed error (NeuroGridConnectionError when it never got one)."""
    attempt = 0
    while True:
        outcome = yield Send(request)
        if isinstance(outcome, TransportFailure):
            delay = config.retry.after_failure(attempt, random())
            if delay is None:
                raise NeuroGridConnectionError(
                    f"{request.method} {request.url} failed after {attempt + 1} attempt(s): "
                    f"{outcome.error}") from outcome.error
        elif outcome is not None:
            if 200 <= outcome.status < 300:
                return outcome
            delay = config.retry.after_status(attempt, outcome.status, outcome.headers,
                                              wall_clock(), random())
            if delay is None:
                raise error_from_reply(outcome.status, outcome.headers, outcome.body)
        else:  # a driver that sends nothing back is a bug, not a network condition
            raise RuntimeError("exchange() was resumed without an outcome")
        yield Sleep(delay)
        attempt += 1


def call_steps(config: ClientConfig, call: Call[T], wall_clock: Callable[[], float],
               random: Callable[[], float]) -> Steps[T]:
    reply = yield from exchange(config, call.request, wall_clock, random)
    return call.parse(reply)


# ---- answers ------------------------------------------------------------------


def json_of(reply: Reply) -> dict[str, Any]:
    try:
        body = json.loads(reply.body)
    except ValueError as exc:
        raise NeuroGridError(f"the server answered {reply.status} with a body that is not "
                             f"JSON: {reply.body[:200]!r}") from exc
    if not isinstance(body, dict):
        raise NeuroGridError(f"the server answered {reply.status} with JSON that is not an "
                             f"object: {reply.body[:200]!r}")
    return body


def parse_task(reply: Reply) -> TaskView:
    return cast(TaskView, json_of(reply)["task"])


def parse_as(kind: type[T]) -> Callable[[Reply], T]:
    def parse(reply: Reply) -> T:
        return cast(T, json_of(reply))
    return parse


def body_bytes(reply: Reply) -> bytes:
    return reply.body


# ---- requests -----------------------------------------------------------------


def encode_audio(audio: AudioInput) -> str:
    """Base64 of audio bytes, or of the file at a path."""
    if isinstance(audio, bytes):
        data = audio
    else:
        with open(audio, "rb") as file:
            data = file.read()
    return base64.b64encode(data).decode("ascii")


def task_body(prompt: str | None = None, model: str | None = None, priority: str | None = None,
              max_tokens: int | None = None, temperature: float | None = None,
              top_p: float | None = None, seed: int | None = None, steps: int | None = None,
              audio: AudioInput | None = None, audio_seconds: float | None = None,
              extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body of POST /api/tasks: the given fields only."""
    fields: dict[str, Any] = {
        "prompt": prompt, "model": model, "priority": priority, "max_tokens": max_tokens,
        "temperature": temperature, "top_p": top_p, "seed": seed, "steps": steps,
        "audio_seconds": audio_seconds,
    }
    body = {name: value for name, value in fields.items() if value is not None}
    if audio is not None:
        body["audio"] = encode_audio(audio)
    for name, value in (extra or {}).items():
        if name in body:
            raise ValueError(f"extra field {name!r} is also given as an argument")
        body[name] = value
    return body


def request(config: ClientConfig, method: str, path: str, json: Mapping[str, Any] | None = None,
            params: Mapping[str, str] | None = None,
            headers: Mapping[str, str] | None = None) -> Request:
    url = config.url(path)
    return Request(method, url, {**config.headers(url), **(headers or {})}, json, params)


def task_path(task_id: str) -> str:
    if not task_id:
        raise ValueError("task_id must be a non-empty string")
    return f"/api/tasks/{quote(task_id, safe='')}"


def submit_task(config: ClientConfig, body: Mapping[str, Any],
                idempotency_key: str) -> Call[Submission]:
    return Call(request(config, "POST", "/api/tasks", json=body,
                        headers={IDEMPOTENCY_HEADER: idempotency_key}),
                parse_as(Submission))


def get_task(config: ClientConfig, task_id: str) -> Call[TaskView]:
    return Call(request(config, "GET", task_path(task_id)), parse_task)


def cancel_task(config: ClientConfig, task_id: str) -> Call[CancelResult]:
    return Call(request(config, "DELETE", task_path(task_id)), parse_as(CancelResult))


def list_tasks(config: ClientConfig, limit: int | None = None, status: str | None = None,
               cursor: str | None = None) -> Call[TaskPage]:
    given = {"limit": None if limit is None else str(limit), "status": status, "cursor": cursor}
    params = {name: value for name, value in given.items() if value is not None}
    return Call(request(config, "GET", "/api/tasks", params=params), parse_as(TaskPage))


def beta_signup(config: ClientConfig, email: str, type: str | None = None,
                source: str | None = None) -> Call[BetaSignup]:
    given = {"email": email, "type": type, "source": source}
    body = {name: value for name, value in given.items() if value is not None}
    return Call(request(config, "POST", "/api/beta/signup", json=body), parse_as(BetaSignup))


def network_status(config: ClientConfig) -> Call[NetworkStatus]:
    return Call(request(config, "GET", "/api/network/status"), parse_as(NetworkStatus))


def health(config: ClientConfig) -> Call[Health]:
    return Call(request(config, "GET", "/health"), parse_as(Health))


def models(config: ClientConfig) -> Call[ModelList]:
    return Call(request(config, "GET", "/api/models"), parse_as(ModelList))


def fetch(config: ClientConfig, url: str) -> Call[bytes]:
    """GET any URL (a result's image, say), relative to the server or absolute."""
    return Call(request(config, "GET", url, headers={"Accept": "*/*"}), body_bytes)


def stream_request(config: ClientConfig, task_id: str) -> Request:
    return request(config, "GET", task_path(task_id) + "/stream",
                   headers={"Accept": "text/event-stream"})


__all__ = [
    "AudioInput", "Call", "IDEMPOTENCY_HEADER", "Outcome", "Reply", "Request", "Send", "Sleep",
    "Step", "Steps", "TransportFailure", "beta_signup", "call_steps", "cancel_task",
    "encode_audio", "exchange", "fetch", "get_task", "health", "json_of", "list_tasks", "models",
    "network_status", "parse_task", "request", "stream_request", "submit_task", "task_body",
    "task_path",
]
