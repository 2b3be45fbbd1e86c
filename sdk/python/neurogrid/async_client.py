# The asynchronous client, over httpx.AsyncClient (asyncio or trio: anyio picks the
# running loop). The same calls as the sync client (protocol.py builds, retries and
# parses them); only the I/O here is awaited.
from __future__ import annotations

import random
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Mapping, TypeVar, cast

import anyio
import httpx

from . import protocol
from .client import lowercase_headers
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


class AsyncNeuroGrid:
    """The NeuroGrid API, awaited. Configured as NeuroGrid is."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, *, retry: RetryPolicy | None = None,
                 http_client: httpx.AsyncClient | None = None) -> None:
        self.config = ClientConfig.resolve(base_url, api_key, timeout, retry)
        self._http = (http_client if http_client is not None
                      else httpx.AsyncClient(timeout=timeout))
        self._owns_http = http_client is None

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncNeuroGrid:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ---- performing protocol.py's steps ---------------------------------------

    async def send(self, request: Request) -> Reply:
        response = await self._http.request(request.method, request.url,
                                            headers=request.headers, json=request.json,
                                            params=request.params)
        return Reply(response.status_code, lowercase_headers(response.headers), response.content)

    async def run(self, call: Call[T]) -> T:
        steps = protocol.call_steps(self.config, call, time.time, random.random)
        try:
            step = next(steps)
            while True:
                if isinstance(step, Sleep):
                    await anyio.sleep(step.seconds)
                    step = steps.send(None)
                    continue
                try:
                    outcome: Reply | TransportFailure = await self.send(step.request)
                except httpx.TransportError as exc:
                    outcome = TransportFailure(exc)
                step = steps.send(outcome)
        except StopIteration as stop:
            return cast(T, stop.value)

    async def stream_events(self, task_id: str,
                            timeout: float | None = None) -> AsyncIterator[StreamEvent]:
        """The task's server-sent events until its `done` event, reconnecting when
        the connection drops (see sse.py)."""
        watch = TaskWatch(self.config, task_id, deadline_after(timeout))
        while True:
            request = watch.request()
            limits = httpx.Timeout(self.config.timeout, read=watch.read_timeout(time.monotonic()))
            error: Exception | None = None
            try:
                async with self._http.stream("GET", request.url, headers=request.headers,
                                             timeout=limits) as response:
                    if response.status_code != 200:
                        raise error_from_reply(response.status_code,
                                               lowercase_headers(response.headers),
                                               await response.aread())
                    async for chunk in response.aiter_bytes():
                        for event in watch.feed(chunk):
                            yield event
                        if watch.final is not None:
                            return
            except httpx.TransportError as exc:
                error = exc
            await anyio.sleep(watch.reconnect_delay(time.monotonic(), error, random.random()))

    # ---- the API --------------------------------------------------------------

    async def submit_task(self, prompt: str | None = None, model: str | None = None, *,
                          priority: str | None = None, max_tokens: int | None = None,
                          temperature: float | None = None, top_p: float | None = None,
                          seed: int | None = None, steps: int | None = None,
                          audio: AudioInput | None = None, audio_seconds: float | None = None,
                          extra: Mapping[str, Any] | None = None,
                          idempotency_key: str | None = None) -> AsyncTask:
        """Submit a task; returns its handle at once (the task runs meanwhile)."""
        body = protocol.task_body(prompt, model, priority, max_tokens, temperature, top_p, seed,
                                  steps, audio, audio_seconds, extra)
        key = idempotency_key or str(uuid.uuid4())
        submission = await self.run(protocol.submit_task(self.config, body, key))
        return AsyncTask(self, submission["task_id"], submission)

    def task(self, task_id: str) -> AsyncTask:
        """A handle for a task submitted earlier (no request is made)."""
        return AsyncTask(self, task_id)

    async def get_task(self, task_id: str) -> TaskView:
        return await self.run(protocol.get_task(self.config, task_id))

    async def cancel_task(self, task_id: str) -> CancelResult:
        return await self.run(protocol.cancel_task(self.config, task_id))

    async def list_tasks(self, limit: int | None = None, status: str | None = None,
                         cursor: str | None = None) -> TaskPage:
        return await self.run(protocol.list_tasks(self.config, limit, status, cursor))

    async def beta_signup(self, email: str, type: str | None = None,
                          source: str | None = None) -> BetaSignup:
        return await self.run(protocol.beta_signup(self.config, email, type, source))

    async def network_status(self) -> NetworkStatus:
        return await self.run(protocol.network_status(self.config))

    async def health(self) -> Health:
        return await self.run(protocol.health(self.config))

    async def models(self) -> ModelList:
        return await self.run(protocol.models(self.config))

    async def fetch(self, url: str) -> bytes:
        return await self.run(protocol.fetch(self.config, url))


class AsyncTask(TaskHandleCore):
    """A submitted task, awaited: wait for it, stream it, cancel it."""

    def __init__(self, client: AsyncNeuroGrid, task_id: str,
                 submission: Submission | None = None) -> None:
        super().__init__(task_id, submission)
        self.client = client

    async def refresh(self) -> TaskView:
        return self.observe(await self.client.get_task(self.task_id))

    async def status(self) -> str:
        return (await self.refresh())["status"]

    async def events(self, timeout: float | None = None) -> AsyncIterator[StreamEvent]:
        async for event in self.client.stream_events(self.task_id, timeout):
            if event["event"] == "done":
                self.observe(cast(TaskView, event["data"]))
            yield event

    async def stream(self, timeout: float | None = None) -> AsyncIterator[str]:
        assembler = TextAssembler()
        async for event in self.events(timeout):
            for piece in assembler.pieces(event):
                yield piece
        rest = assembler.rest(self.last)
        if rest:
            yield rest

    async def wait(self, timeout: float | None = DEFAULT_WAIT) -> TaskView:
        if not self.done:
            async for _ in self.events(timeout):
                pass
        assert self.last is not None  # events() ends with `done`, or raises
        return self.last

    async def get_response(self, timeout: float | None = DEFAULT_WAIT) -> str:
        return self.response_of(await self.wait(timeout))

    async def cancel(self) -> TaskView:
        return self.observe((await self.client.cancel_task(self.task_id))["task"])

    async def image_bytes(self, timeout: float | None = DEFAULT_WAIT) -> bytes:
        return await self.client.fetch(self.image_url(await self.wait(timeout)))

    async def save(self, path: str | Path, timeout: float | None = DEFAULT_WAIT) -> Path:
        target = Path(path)
        target.write_bytes(await self.image_bytes(timeout))
        return target


__all__ = ["AsyncNeuroGrid", "AsyncTask"]
