# The synchronous client, over httpx.Client. The calls themselves (requests,
# retries, parsing) are protocol.py's; this module only performs their steps:
# sends requests, sleeps, and reads the task stream (sse.py's TaskWatch).
from __future__ import annotations

import random
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping, TypeVar, cast

import httpx

from . import protocol
from .config import DEFAULT_TIMEOUT, DEFAULT_WAIT, ClientConfig
from .errors import error_from_reply
from .handle import TaskHandleCore, deadline_after
from .protocol import AudioInput, Call, Reply, Request, Sleep, TransportFailure
from .retry import RetryPolicy
from .sse import TaskWatch, TextAssembler
from .types import (
    BetaSignup, CancelResult, Health, ModelList, NetworkStatus, StreamEvent, Submission,
    TaskPage, TaskView,
)

T = TypeVar("T")


def lowercase_headers(headers: httpx.Headers) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


class NeuroGrid:
    """The NeuroGrid API. `base_url` and `api_key` default to NEUROGRID_BASE_URL and
    NEUROGRID_API_KEY, then to the local server (http://127.0.0.1:8080) and none."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, *, retry: RetryPolicy | None = None,
                 http_client: httpx.Client | None = None) -> None:
        self.config = ClientConfig.resolve(base_url, api_key, timeout, retry)
        self._http = http_client if http_client is not None else httpx.Client(timeout=timeout)
        self._owns_http = http_client is None

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> NeuroGrid:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- performing protocol.py's steps ---------------------------------------

    def send(self, request: Request) -> Reply:
        response = self._http.request(request.method, request.url, headers=request.headers,
                                      json=request.json, params=request.params)
        return Reply(response.status_code, lowercase_headers(response.headers), response.content)

    def run(self, call: Call[T]) -> T:
        steps = protocol.call_steps(self.config, call, time.time, random.random)
        try:
            step = next(steps)
            while True:
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    step = steps.send(None)
                    continue
                try:
                    outcome: Reply | TransportFailure = self.send(step.request)
                except httpx.TransportError as exc:
                    outcome = TransportFailure(exc)
                step = steps.send(outcome)
        except StopIteration as stop:
            return cast(T, stop.value)

    def stream_events(self, task_id: str, timeout: float | None = None) -> Iterator[StreamEvent]:
        """The task's server-sent events until its `done` event, reconnecting when
        the connection drops (see sse.py)."""
        watch = TaskWatch(self.config, task_id, deadline_after(timeout))
        while True:
            request = watch.request()
            limits = httpx.Timeout(self.config.timeout, read=watch.read_timeout(time.monotonic()))
            error: Exception | None = None
            try:
                with self._http.stream("GET", request.url, headers=request.headers,
                                       timeout=limits) as response:
                    if response.status_code != 200:
                        raise error_from_reply(response.status_code,
                                               lowercase_headers(response.headers),
                                               response.read())
                    for chunk in response.iter_bytes():
                        yield from watch.feed(chunk)
                        if watch.final is not None:
                            return
            except httpx.TransportError as exc:
                error = exc
            time.sleep(watch.reconnect_delay(time.monotonic(), error, random.random()))

    # ---- the API --------------------------------------------------------------

    def submit_task(self, prompt: str | None = None, model: str | None = None, *,
                    priority: str | None = None, max_tokens: int | None = None,
                    temperature: float | None = None, top_p: float | None = None,
                    seed: int | None = None, steps: int | None = None,
                    audio: AudioInput | None = None, audio_seconds: float | None = None,
                    extra: Mapping[str, Any] | None = None,
                    idempotency_key: str | None = None) -> Task:
        """Submit a task; returns its handle at once (the task runs meanwhile)."""
        body = protocol.task_body(prompt, model, priority, max_tokens, temperature, top_p, seed,
                                  steps, audio, audio_seconds, extra)
        key = idempotency_key or str(uuid.uuid4())
        submission = self.run(protocol.submit_task(self.config, body, key))
        return Task(self, submission["task_id"], submission)

    def task(self, task_id: str) -> Task:
        """A handle for a task submitted earlier (no request is made)."""
        return Task(self, task_id)

    def get_task(self, task_id: str) -> TaskView:
        return self.run(protocol.get_task(self.config, task_id))

    def cancel_task(self, task_id: str) -> CancelResult:
        return self.run(protocol.cancel_task(self.config, task_id))

    def list_tasks(self, limit: int | None = None, status: str | None = None,
                   cursor: str | None = None) -> TaskPage:
        return self.run(protocol.list_tasks(self.config, limit, status, cursor))

    def beta_signup(self, email: str, type: str | None = None,
                    source: str | None = None) -> BetaSignup:
        return self.run(protocol.beta_signup(self.config, email, type, source))

    def network_status(self) -> NetworkStatus:
        return self.run(protocol.network_status(self.config))

    def health(self) -> Health:
        return self.run(protocol.health(self.config))

    def models(self) -> ModelList:
        return self.run(protocol.models(self.config))

    def fetch(self, url: str) -> bytes:
        return self.run(protocol.fetch(self.config, url))


class Task(TaskHandleCore):
    """A submitted task: wait for it, stream it, cancel it."""

    def __init__(self, client: NeuroGrid, task_id: str,
                 submission: Submission | None = None) -> None:
        super().__init__(task_id, submission)
        self.client = client

    def refresh(self) -> TaskView:
        """The task now, as the server shows it."""
        return self.observe(self.client.get_task(self.task_id))

    def status(self) -> str:
        return self.refresh()["status"]

    def events(self, timeout: float | None = None) -> Iterator[StreamEvent]:
        for event in self.client.stream_events(self.task_id, timeout):
            if event["event"] == "done":
                self.observe(cast(TaskView, event["data"]))
            yield event

    def stream(self, timeout: float | None = None) -> Iterator[str]:
        """The generated text, piece by piece, as the worker produces it; the pieces
        add up to the result (what the stream missed comes last, from the result)."""
        assembler = TextAssembler()
        for event in self.events(timeout):
            yield from assembler.pieces(event)
        rest = assembler.rest(self.last)
        if rest:
            yield rest

    def wait(self, timeout: float | None = DEFAULT_WAIT) -> TaskView:
        """The task once it has ended (any final status)."""
        if not self.done:
            for _ in self.events(timeout):
                pass
        assert self.last is not None  # events() ends with `done`, or raises
        return self.last

    def get_response(self, timeout: float | None = DEFAULT_WAIT) -> str:
        """The task's result; TaskFailedError when it ended without one."""
        return self.response_of(self.wait(timeout))

    def cancel(self) -> TaskView:
        return self.observe(self.client.cancel_task(self.task_id)["task"])

    def image_bytes(self, timeout: float | None = DEFAULT_WAIT) -> bytes:
        """The image an image task made (its result is the image's URL)."""
        return self.client.fetch(self.image_url(self.wait(timeout)))

    def save(self, path: str | Path, timeout: float | None = DEFAULT_WAIT) -> Path:
        target = Path(path)
        target.write_bytes(self.image_bytes(timeout))
        return target


__all__ = ["NeuroGrid", "Task"]
