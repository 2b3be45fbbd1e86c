# The worker agent: a node operator's side of the worker protocol (version 1).
#
#     worker = Worker(config, executor, websocket_connector(url))
#     async with trio.open_nursery() as nursery:
#         nursery.start_soon(worker.run)      # connect, serve, reconnect ...
#         ...; worker.drain()                 # on Ctrl-C: finish or hand back, then return
#
# Theory of operation. `run` is a reconnect loop around one connection at a time.
# On each connection: send `hello`, wait for `welcome` (an `error` instead is a
# refusal: final when it says retry=false, e.g. a bad token), then run, in one
# nursery: the reader (assign -> start a task, cancel -> cancel its scope), the
# heartbeat loop (every `heartbeat_interval` the coordinator asked for), the
# progress streamer and each running task. A task sends `accepted`, runs on the
# executor, then sends its last progress and `result` or `failed`; meanwhile the
# streamer sends every task's new progress each `progress_interval`, merged, so a
# fast model does not send one frame per token. When the connection
# ends, every task on it is cancelled: the coordinator has re-queued them.
# A verification job (an assign with `verify`: {claimed, proof} of another node's
# result) goes the same way, slot, cancel and all, but runs the executor's
# `verify` instead of `run`; its result's output is the verdict {passed, score,
# detail}, its usage the validator's own seconds (tokens 0), and it carries no
# progress or proof. A `verify` without `claimed`, or with a proof that is not an
# object, is refused as `failed` (not retryable): the job itself is malformed.
#
# Rules:
# - A task is listed in heartbeats from before its `accepted` until after its
#   `result`/`failed` has been sent: frames on one connection keep their order, so
#   the coordinator can tell a task the worker dropped from one in flight.
# - A cancelled task sends nothing (the coordinator has already moved on).
# - Reconnects back off exponentially with jitter (`backoff_initial` doubling up
#   to `backoff_max`, each delay drawn from [d/2, d]), reset after a welcome; a
#   refusal that says `retry_after` (the coordinator's reconnect rate limit) waits
#   at least that long.
# - Several coordinators (CoordinatorList, `--coordinator` repeated): a refusal
#   that names the leader (a standby's, an API process's) is followed at once,
#   within [0, backoff_initial]; a connection that fails or is refused otherwise
#   moves on to the next URL, with the backoff above.
# - Drain: send `draining`, take no new work, wait up to `drain_grace` for the
#   running tasks, then close; what is still running is handed back (the
#   coordinator re-queues a closed node's tasks). `stop()` closes at once.
# - Keepalive: where the connection can ping (websockets), the worker pings every
#   `keepalive_interval`; no answer within `keepalive_timeout` means the coordinator
#   is gone without closing (a half-open connection): the connection is dropped and
#   the reconnect loop takes over. (The coordinator, hearing no heartbeats, has
#   re-queued this worker's tasks by then.)
# - Time is trio's clock only, so the agent runs in virtual time in tests.
from __future__ import annotations

import logging
import random
import threading
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, Protocol

import attrs
import trio
import trio_websocket

from engine.core.events import Usage
from engine.protocol import (
    MAX_FRAME_BYTES, PROTOCOL_VERSION, Accepted, AssignTask, CancelTask, Connection,
    ConnectionClosed, Draining, Error, Failed, Gpu, Heartbeat, Hello, Message, Progress,
    ProtocolError, Result, WebSocketConnection, Welcome, decode, encode,
)
from engine.worker.runners.base import InvalidTaskInput, RunResult, Verdict

log = logging.getLogger(__name__)


class WorkerRefused(Exception):
    """The coordinator refused this worker for good (bad token, bad configuration)."""


class CoordinatorUnreachable(Exception):
    """The coordinator could not be reached within `max_retries` attempts."""


class Executor(Protocol):
    """Runs tasks of the models this node serves. `run` must return or raise soon
    after it is cancelled; `on_progress` may be called from any thread."""

    models: tuple[str, ...]
    loaded: tuple[str, ...]

    async def run(self, model: str, inputs: Mapping[str, Any], params: Mapping[str, Any],
                  on_progress: Callable[[dict[str, Any]], None]) -> RunResult: ...

    async def verify(self, model: str, inputs: Mapping[str, Any], params: Mapping[str, Any],
                     claimed: Any, proof: Mapping[str, Any] | None) -> Verdict:
        """Judge another node's output `claimed` (and its proof) for this task."""
        ...


Connector = Callable[[], AbstractAsyncContextManager[Connection]]


@attrs.frozen
class WorkerConfig:
    token: str
    name: str = ""
    gpu: str = "cpu"
    vram_gb: float = 0.0
    slots: int = 1
    location: str = ""
    region: str = ""
    price_per_hour: float | None = None
    progress_interval: float = 0.05
    drain_grace: float = 30.0
    welcome_timeout: float = 15.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    max_retries: int | None = None  # consecutive failed connections; None: forever
    max_frame_bytes: int = MAX_FRAME_BYTES
    keepalive_interval: float = 15.0  # seconds between pings (websockets only)
    keepalive_timeout: float = 20.0  # no pong within this: the coordinator is gone
    # model -> the weights that serve it, in words, as the hello announces them (a
    # stand-in says what it stands in for)
    weights: Mapping[str, str] = attrs.field(factory=dict)


class ProgressBuffer:
    """Partial output waiting to be sent; thread-safe. Lists concatenate, other
    values keep the latest (e.g. {"tokens": [a], "index": 1} + {"tokens": [b],
    "index": 2} -> {"tokens": [a, b], "index": 2})."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, Any] = {}

    def add(self, partial: Mapping[str, Any]) -> None:
        with self._lock:
            for key, value in partial.items():
                old = self._pending.get(key)
                if isinstance(value, list) and isinstance(old, list):
                    old.extend(value)
                else:
                    self._pending[key] = list(value) if isinstance(value, list) else value

    def take(self) -> dict[str, Any] | None:
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending or None


class _Running:
    """A task this worker runs: its cancel scope and its unsent progress."""

    __slots__ = ("scope", "buffer")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.buffer = ProgressBuffer()


@asynccontextmanager
async def websocket_connector(url: str, max_frame_bytes: int = MAX_FRAME_BYTES,
                              disconnect_timeout: float = 5.0) -> AsyncIterator[Connection]:
    """Connect to the coordinator's websocket endpoint. Closing waits at most
    `disconnect_timeout` for the coordinator's side of the close handshake (a silent
    coordinator never sends it)."""
    async with trio_websocket.open_websocket_url(
            url, max_message_size=4 * max_frame_bytes, connect_timeout=10.0,
            disconnect_timeout=disconnect_timeout) as ws:
        yield WebSocketConnection(ws)


# What counts as "could not connect": refused/unreachable sockets, failed or
# rejected handshakes.
CONNECT_ERRORS = (OSError, trio_websocket.HandshakeError)


class CoordinatorList:
    """A Connector over several coordinator URLs (a deployment whose coordinators
    fail over: one leads, the others stand by). It connects to the leader when one
    was named (a standby's "not the leader" error says where: `redirect`), else to
    the current URL of the list; `failed` (no connection, or no welcome) forgets
    the named leader and moves on to the next URL of the list (a standby may name
    a leader that has just died)."""

    def __init__(self, urls: list[str],
                 connector: Callable[[str], AbstractAsyncContextManager[Connection]]
                 = websocket_connector) -> None:
        if not urls:
            raise ValueError("at least one coordinator URL")
        self.urls, self.connector = list(urls), connector
        self.index = 0
        self.leader = ""

    @property
    def url(self) -> str:
        return self.leader or self.urls[self.index]

    def __call__(self) -> AbstractAsyncContextManager[Connection]:
        return self.connector(self.url)

    def redirect(self, leader: str) -> None:
        self.leader = leader

    def failed(self) -> None:
        self.leader = ""
        self.index = (self.index + 1) % len(self.urls)


class Worker:
    def __init__(self, config: WorkerConfig, executor: Executor, connect: Connector,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.executor = executor
        self.connect = connect
        self.rng = rng or random.Random()
        self.node_id = ""
        self.running: dict[str, _Running] = {}
        self.completed = 0
        self._drain = trio.Event()
        self._stop = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self._connection_scope = trio.CancelScope()
        self._retry_after = 0.0  # the last refusal's retry_after
        self._redirected = False  # the last refusal named the leader: go there now
        self.coordinators = connect if isinstance(connect, CoordinatorList) else None

    # ---- control -----------------------------------------------------------------

    def drain(self) -> None:
        """Take no new work; finish (or, after drain_grace, hand back) and return."""
        self._drain.set()

    def stop(self) -> None:
        """Close now; running tasks are handed back to the coordinator."""
        self._drain.set()
        self._stop.set()

    # ---- the reconnect loop ----------------------------------------------------

    async def run(self) -> None:
        """Serve until drained or stopped. Raises WorkerRefused, CoordinatorUnreachable."""
        failures = 0
        while not self._drain.is_set():
            welcomed = False
            try:
                async with self.connect() as conn:
                    welcomed = await self._serve(conn)
                    reason = "connection closed"
            except CONNECT_ERRORS as exc:
                reason = _describe(exc)
            redirected, self._redirected = self._redirected, False
            if welcomed:
                failures = 0
            else:
                failures += 1
                if self.coordinators is not None and not redirected:
                    self.coordinators.failed()
            if self._drain.is_set():
                return
            if self.config.max_retries is not None and failures > self.config.max_retries:
                raise CoordinatorUnreachable(reason)
            ceiling = self.config.backoff_initial * 2 ** max(0, failures - 1)
            delay = self.rng.uniform(0.5, 1.0) * min(self.config.backoff_max, ceiling)
            if redirected:  # sent to the leader: go now (a second hop backs off)
                delay = self.rng.uniform(0.0, self.config.backoff_initial)
            delay, self._retry_after = max(delay, self._retry_after), 0.0
            log.warning("coordinator: %s; reconnecting in %.1f s", reason, delay)
            with trio.move_on_after(delay):
                await self._drain.wait()

    async def _serve(self, conn: Connection) -> bool:
        """One connection: handshake, then serve it until it ends. True if welcomed."""
        config, executor = self.config, self.executor
        hello = Hello(token=config.token, gpu=Gpu(config.gpu, config.vram_gb),
                      models=executor.models, slots=config.slots, name=config.name,
                      location=config.location, price_per_hour=config.price_per_hour,
                      region=config.region, loaded=executor.loaded, protocol=PROTOCOL_VERSION,
                      weights=dict(config.weights))
        try:
            await conn.send(encode(hello))
            with trio.fail_after(config.welcome_timeout):
                welcome = decode(await conn.receive(), config.max_frame_bytes)
        except (ConnectionClosed, trio.TooSlowError, ProtocolError) as exc:
            log.warning("handshake failed: %s", _describe(exc))
            return False
        if isinstance(welcome, Error):
            if not welcome.retry:
                raise WorkerRefused(welcome.message)
            log.warning("coordinator turned us away for now: %s", welcome.message)
            self._retry_after = welcome.retry_after or 0.0
            if welcome.leader and self.coordinators is not None:
                self.coordinators.redirect(welcome.leader)
                self._redirected = True
            return False
        if not isinstance(welcome, Welcome):
            log.warning("handshake failed: expected welcome, got %s", type(welcome).__name__)
            return False
        self.node_id = welcome.node_id
        log.info("connected as %s (%s); serving %s with %d slot(s)", welcome.node_id,
                 conn.remote, ", ".join(executor.models), config.slots)
        async with trio.open_nursery() as nursery:
            self._connection_scope = nursery.cancel_scope
            nursery.start_soon(self._heartbeats, conn, welcome.heartbeat_interval)
            nursery.start_soon(self._stream, conn)
            nursery.start_soon(self._drainer, conn, nursery.cancel_scope)
            ping = getattr(conn, "ping", None)
            if ping is not None:
                nursery.start_soon(self._keepalive, ping, nursery.cancel_scope)
            await self._reader(conn, nursery)
            nursery.cancel_scope.cancel()
        return True

    # ---- per-connection tasks --------------------------------------------------

    async def _reader(self, conn: Connection, nursery: trio.Nursery) -> None:
        while True:
            try:
                message = decode(await conn.receive(), self.config.max_frame_bytes)
            except ConnectionClosed as exc:
                if not self._drain.is_set():
                    log.warning("disconnected from the coordinator: %s", exc.reason or "closed")
                return
            except ProtocolError as exc:
                log.warning("bad frame from the coordinator: %s", exc)
                continue
            if isinstance(message, AssignTask):
                await self._on_assign(conn, nursery, message)
            elif isinstance(message, CancelTask):
                running = self.running.get(message.task_id)
                if running is not None:
                    log.info("task %s cancelled: %s", message.task_id, message.reason)
                    running.scope.cancel()
            elif isinstance(message, Error):
                log.warning("coordinator says: %s", message.message)
            else:
                log.warning("unexpected %s frame from the coordinator", type(message).__name__)

    async def _on_assign(self, conn: Connection, nursery: trio.Nursery,
                         assign: AssignTask) -> None:
        refusal = ""
        if self._drain.is_set():
            refusal = "the node is draining"
        elif assign.model not in self.executor.models:
            refusal = f"this node does not serve {assign.model!r}"
        elif assign.task_id in self.running:
            refusal = "already running"
        if refusal:
            await self._send(conn, Failed(assign.task_id, refusal, retryable=True))
            return
        running = _Running()
        self.running[assign.task_id] = running
        self._idle = trio.Event()
        nursery.start_soon(self._run_task, conn, assign, running, name=f"task {assign.task_id}")

    async def _run_task(self, conn: Connection, assign: AssignTask, running: _Running) -> None:
        task_id, buffer = assign.task_id, running.buffer
        try:
            with running.scope:
                await self._send(conn, Accepted(task_id))
                reply: Message
                try:
                    if assign.verify is not None:
                        reply = await self._verify(assign)
                    else:
                        result = await self.executor.run(assign.model, assign.input,
                                                         assign.params, buffer.add)
                        reply = Result(task_id, result.output, _usage(result.usage),
                                       result.finish_reason, result.proof)
                except InvalidTaskInput as exc:
                    reply = Failed(task_id, str(exc), retryable=False)
                except Exception as exc:  # a runner's failure must not end the worker
                    log.exception("task %s failed", task_id)
                    reply = Failed(task_id, f"{type(exc).__name__}: {exc}", retryable=True)
                partial = buffer.take()
                if partial and isinstance(reply, Result):
                    await self._send(conn, Progress(task_id, partial))
                await self._send(conn, reply)
                if isinstance(reply, Result):
                    self.completed += 1
        finally:
            del self.running[task_id]
            if not self.running:
                self._idle.set()

    async def _verify(self, assign: AssignTask) -> Message:
        """Run a verification job; its verdict as a result (or a refusal as failed)."""
        job = assign.verify or {}
        proof = job.get("proof")
        if "claimed" not in job:
            return Failed(assign.task_id, "assign.verify must hold 'claimed' (the output to "
                          "verify)", retryable=False)
        if proof is not None and not isinstance(proof, Mapping):
            return Failed(assign.task_id, f"assign.verify.proof must be an object or null, got "
                          f"{type(proof).__name__}", retryable=False)
        started = trio.current_time()
        verdict = await self.executor.verify(assign.model, assign.input, assign.params,
                                             job["claimed"], proof)
        log.info("verified task %s: %s (score %.3f) %s", assign.task_id,
                 "passed" if verdict.passed else "FAILED", verdict.score, verdict.detail)
        return Result(assign.task_id, verdict.to_json(),
                      Usage(seconds=trio.current_time() - started), "stop")

    async def _stream(self, conn: Connection) -> None:
        """Every progress_interval, send what each running task produced meanwhile."""
        while True:
            await trio.sleep(self.config.progress_interval)
            for task_id, running in list(self.running.items()):
                partial = running.buffer.take()
                if partial:
                    await self._send(conn, Progress(task_id, partial))

    async def _heartbeats(self, conn: Connection, interval: float) -> None:
        slots = self.config.slots
        while True:
            await trio.sleep(interval)
            await self._send(conn, Heartbeat(tuple(self.running), len(self.running) / slots,
                                             self.executor.loaded))

    async def _keepalive(self, ping: Callable[[], Awaitable[None]],
                         scope: trio.CancelScope) -> None:
        config = self.config
        while True:
            await trio.sleep(config.keepalive_interval)
            with trio.move_on_after(config.keepalive_timeout) as waiting:
                try:
                    await ping()
                except ConnectionClosed:
                    return  # the reader sees the close and ends the connection
            if waiting.cancelled_caught:
                log.warning("coordinator silent: no answer to a ping for %g s; "
                            "dropping the connection", config.keepalive_timeout)
                scope.cancel()
                return

    async def _drainer(self, conn: Connection, scope: trio.CancelScope) -> None:
        await self._drain.wait()
        if not self._stop.is_set():
            log.info("draining: no new tasks; waiting up to %.0f s for %d running task(s)",
                     self.config.drain_grace, len(self.running))
            await self._send(conn, Draining())
            with trio.move_on_after(self.config.drain_grace) as grace:
                async with trio.open_nursery() as waiting:
                    waiting.start_soon(_set_when, self._stop, waiting.cancel_scope)
                    await self._idle.wait()
                    waiting.cancel_scope.cancel()
            if grace.cancelled_caught or self.running:
                log.warning("drain: handing back %d unfinished task(s)", len(self.running))
        reason = "worker shut down (drained)" if not self.running else "worker shut down"
        with trio.CancelScope(shield=True), trio.move_on_after(5.0):
            await conn.aclose(reason)
        scope.cancel()

    async def _send(self, conn: Connection, message: Message) -> None:
        """Send a frame. When the connection is gone, end everything on it (the
        connection's nursery) rather than raise into the sender."""
        try:
            await conn.send(encode(message))
        except ConnectionClosed as exc:
            log.warning("disconnected from the coordinator: %s", exc.reason or "closed")
            self._connection_scope.cancel()
            await trio.sleep_forever()  # cancelled at once


async def _set_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _usage(usage: Mapping[str, float | int]) -> Usage:
    return Usage(seconds=float(usage.get("seconds", 0.0)), tokens=int(usage.get("tokens", 0)),
                 prompt_tokens=int(usage.get("prompt_tokens", 0)),
                 steps=int(usage.get("steps", 0)),
                 audio_seconds=float(usage.get("audio_seconds", 0.0)))


def _describe(exc: BaseException) -> str:
    if type(exc) is trio_websocket.HandshakeError and exc.__cause__ is not None:
        exc = exc.__cause__  # a networking error, wrapped
    if isinstance(exc, trio_websocket.ConnectionRejected):
        return f"the server rejected the websocket upgrade (HTTP {exc.status_code})"
    if isinstance(exc, trio_websocket.ConnectionTimeout):
        return "timed out connecting"
    if isinstance(exc, OSError) and exc.errno is None and isinstance(
            exc.__cause__, BaseExceptionGroup):  # trio: "all attempts to connect failed"
        return _describe(exc.__cause__)
    if isinstance(exc, OSError):
        return f"unreachable ({exc.strerror or exc})"
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:  # e.g. every address failed
        return _describe(exc.exceptions[0])
    if isinstance(exc, trio.TooSlowError):
        return "no welcome in time"
    return str(exc) or type(exc).__name__


__all__ = ["CONNECT_ERRORS", "Connector", "CoordinatorList", "CoordinatorUnreachable", "Executor", "ProgressBuffer",
           "Worker", "WorkerConfig", "WorkerRefused", "websocket_connector"]
