# NodeSession: the coordinator's actor for one worker connection.
#
# Theory of operation. A session lives as long as its connection:
#   1. handshake - the first frame must be a valid `hello` of protocol 1, within
#      `hello_timeout`, whose token the verifier accepts; anything else is refused:
#      an `error` frame saying why, then a close with the same reason.
#   2. join - the session hands the node to its host, the Coordinator
#      (`SessionHost.join`); the host's actor queues `welcome` on the session's
#      outbox before any `assign`.
#   3. serve - two tasks: the writer drains the outbox onto the connection; the
#      reader decodes frames and hands them to the host (`report`). `progress`
#      and `accepted` frames are the hot path and do not go through the actor: the
#      reader checks the task is this node's (`tasks`, a NodeTasks) and hands
#      progress to `SessionHost.progress` (which checks the scheduler still runs
#      it here) / marks it accepted itself; frame order on one connection keeps
#      progress before result. Model names a worker reports are turned into the
#      catalog's here, before the host sees them.
#      While it serves, the session checks its token again every
#      `reverify_interval` seconds (`SessionHost.still_valid`): a token revoked in
#      the store, by any process, closes the session within that time. (A verifier
#      that fails keeps the session: a store hiccup is not a revocation.)
#   4. leave - however the session ends (peer closed, heartbeat timeout, protocol
#      errors, coordinator shutdown), the host hears `leave` exactly once and the
#      node is lost to the scheduler, which re-queues its tasks.
#
# Rules:
# - The actor owns the scheduler; a session never changes it. The actor reaches a
#   session only through `deliver` / `close` (non-blocking) and its `tasks`, so a
#   slow or dead socket can never stall the actor: a full outbox closes the
#   session instead. The session reaches the coordinator only through the
#   `SessionHost` protocol below; it does not import the coordinator.
# - A bad frame after the handshake gets an `error` frame and the session goes on;
#   after `max_protocol_errors` of them the session closes. Before the handshake,
#   any error closes. A bad `result` or `failed` frame about a task this node holds
#   (the codec names the task) also goes to the host as `Refused`: the run failed
#   on this node, the task is taken back (never silently dropped).
# - The handshake refuses, before the token is checked, a hello its token may not
#   send yet (`SessionHost.admit`, the reconnect rate limit: error retry=true with
#   `retry_after`), and a price outside [0, max_price_per_hour].
# - `tasks` (node_tasks.NodeTasks): the tasks assigned to this session that the
#   worker has not yet reported on (result/failed) - frames about any other task
#   id are protocol errors - and which of them the worker accepted. The actor
#   assigns, reports and reconciles; the reader only marks tasks accepted.
from __future__ import annotations

import logging
from typing import Protocol

import attrs
import trio

from engine.core import CatalogError, NodeSpec, gpu_class_name, resolve_model
from engine.protocol import (
    MAX_FRAME_BYTES, PROTOCOL_VERSION, WORKER_MESSAGES, Accepted, Connection,
    ConnectionClosed, Draining, Error, Failed, Heartbeat, Hello, Message, Progress,
    ProtocolError, Result, decode, encode,
)

from .node_tasks import NodeTasks

log = logging.getLogger(__name__)

OUTBOX_SIZE = 1024  # frames queued to one worker before it counts as stuck
CLOSE_GRACE = 5.0  # seconds a closing session may take to say goodbye


@attrs.frozen
class NodeIdentity:
    """Who a worker token belongs to, as the token store knows it."""

    node_id: str
    name: str = ""


@attrs.frozen
class SessionLimits:
    """What a session enforces on its worker (CoordinatorConfig.session_limits())."""

    hello_timeout: float = 10.0  # a connection must say hello within this
    max_frame_bytes: int = MAX_FRAME_BYTES
    max_protocol_errors: int = 10  # bad frames tolerated per connection, then close
    max_slots: int = 256  # a hello announcing more slots is refused
    max_price_per_hour: float = 1000.0  # a hello asking more (dollars an hour) is refused
    reverify_interval: float | None = None  # seconds between token re-checks; None: never


@attrs.frozen
class Refused:
    """A report (result/failed frame) about a held task that the codec refused."""

    task_id: str
    reason: str


# The frames a session hands to its host's actor (progress and accepted it handles
# itself, see above; hello is the handshake's).
NodeReport = Heartbeat | Result | Failed | Draining | Refused


class SessionHost(Protocol):
    """What a NodeSession needs of the coordinator that runs it."""

    def admit(self, token: str) -> float:
        """0.0 when a hello with `token` may be checked now; else seconds to wait."""
        ...

    async def identify(self, token: str) -> NodeIdentity | None:
        """The node a worker token belongs to; None refuses it."""
        ...

    async def still_valid(self, token: str, identity: NodeIdentity) -> bool:
        """Whether `token` still belongs to `identity` (False: revoked)."""
        ...

    async def join(self, session: NodeSession, spec: NodeSpec) -> bool:
        """The handshake succeeded; False when the host is shutting down."""
        ...

    async def report(self, session: NodeSession, message: NodeReport) -> bool:
        """A frame for the actor; False when the host is shutting down."""
        ...

    async def leave(self, session: NodeSession, reason: str) -> None:
        """The session ended (called once, after a successful join)."""
        ...

    def progress(self, session: NodeSession, message: Progress) -> None:
        """Streamed output for a task this session holds (never blocks)."""
        ...


@attrs.frozen
class _Close:
    reason: str


def _model_name(name: str) -> str:
    try:
        return resolve_model(name).name
    except CatalogError:
        return name  # the core ignores models it does not know


class NodeSession:
    """One worker connection, on the coordinator's side. Run with `run()`."""

    def __init__(self, host: SessionHost, conn: Connection,
                 limits: SessionLimits = SessionLimits()) -> None:
        self.host = host
        self.conn = conn
        self.config = limits
        self.node_id = ""
        self.spec: NodeSpec | None = None  # after the handshake
        self.weights: dict[str, str] = {}  # catalog model -> the weights serving it, in words
        self.identity: NodeIdentity | None = None  # after the handshake
        self._token = ""
        self.tasks = NodeTasks()
        self.protocol_errors = 0
        self.close_reason = ""
        self._outbox_send, self._outbox_receive = trio.open_memory_channel[str | _Close](
            OUTBOX_SIZE)
        self._scope = trio.CancelScope()

    # ---- called by the actor (never blocks) ------------------------------------

    def deliver(self, message: Message) -> bool:
        """Queue a frame for the worker; False when the session cannot take it."""
        try:
            self._outbox_send.send_nowait(encode(message))
        except trio.WouldBlock:
            self.close(f"worker is not reading its frames ({OUTBOX_SIZE} queued)")
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    def close(self, reason: str) -> None:
        """Send `error {reason}` and close; the session then ends (within
        CLOSE_GRACE seconds even if the worker stopped reading)."""
        if not self.close_reason:
            self.close_reason = reason
            self._scope.deadline = min(self._scope.deadline, trio.current_time() + CLOSE_GRACE)
            try:
                self._outbox_send.send_nowait(_Close(reason))
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                self._scope.cancel()  # no room for a goodbye: just hang up
            self._outbox_send.close()

    # ---- the session's own tasks ---------------------------------------------

    async def run(self) -> None:
        joined = False
        try:
            with self._scope:
                spec = await self._handshake()
                if spec is None:
                    return
                self.node_id, self.spec = spec.node_id, spec
                if not await self.host.join(self, spec):
                    await self._refuse("the coordinator is shutting down", retry=True)
                    return
                joined = True
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, nursery.cancel_scope)
                    if self.config.reverify_interval is not None:
                        nursery.start_soon(self._reverify, self.config.reverify_interval)
                    await self._reader()
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                if joined:
                    await self.host.leave(self, self.close_reason or "disconnected")
                with trio.move_on_after(CLOSE_GRACE):
                    await self.conn.aclose(self.close_reason)

    async def _refuse(self, reason: str, retry: bool = False,
                      retry_after: float | None = None) -> None:
        log.info("refused worker %s: %s", self.conn.remote, reason)
        self.close_reason = reason
        with trio.move_on_after(CLOSE_GRACE):
            try:
                await self.conn.send(encode(Error(reason, retry, retry_after)))
            except ConnectionClosed:
                pass

    async def _handshake(self) -> NodeSpec | None:
        config = self.config
        try:
            with trio.fail_after(config.hello_timeout):
                text = await self.conn.receive()
        except trio.TooSlowError:
            await self._refuse(f"no hello within {config.hello_timeout:g} s", retry=True)
            return None
        except ConnectionClosed:
            return None
        try:
            hello = decode(text, config.max_frame_bytes)
        except ProtocolError as exc:
            await self._refuse(f"bad hello: {exc}")
            return None
        if not isinstance(hello, Hello):
            await self._refuse("the first frame must be hello")
            return None
        problem = self._check_hello(hello)
        if problem:
            await self._refuse(problem)
            return None
        wait = self.host.admit(hello.token)
        if wait > 0:
            await self._refuse(f"this token connects too often: try again in {wait:.1f} s",
                               retry=True, retry_after=wait)
            return None
        try:
            identity = await self._identify(hello.token)
        except Exception:
            log.exception("the token verifier failed; refusing the worker for now")
            await self._refuse("the coordinator could not check the token; try again later",
                               retry=True)
            return None
        if identity is None:
            await self._refuse("token refused: unknown or revoked node token")
            return None
        self.weights = {_model_name(m): words for m, words in hello.weights.items()}
        self.identity, self._token = identity, hello.token
        return NodeSpec(
            node_id=identity.node_id, gpu=gpu_class_name(hello.gpu.name),
            vram_gb=hello.gpu.vram_gb, models=tuple(_model_name(m) for m in hello.models),
            slots=hello.slots, price_per_hour=hello.price_per_hour, region=hello.region,
            loaded=tuple(_model_name(m) for m in hello.loaded),
            name=hello.name or identity.name, location=hello.location,
        )

    def _check_hello(self, hello: Hello) -> str:
        if hello.protocol != PROTOCOL_VERSION:
            return (f"protocol version {hello.protocol} is not supported "
                    f"(this coordinator speaks {PROTOCOL_VERSION})")
        if not 1 <= hello.slots <= self.config.max_slots:
            return f"slots must be between 1 and {self.config.max_slots}, got {hello.slots}"
        if not hello.models:
            return "a worker must serve at least one model"
        price, most = hello.price_per_hour, self.config.max_price_per_hour
        if price is not None and not 0 <= price <= most:
            return (f"price_per_hour must be between 0 and {most:g} dollars, "
                    f"got {price:.6g}")
        return ""

    async def _identify(self, token: str) -> NodeIdentity | None:
        return await self.host.identify(token)

    async def _reverify(self, interval: float) -> None:
        identity = self.identity
        assert identity is not None
        while True:
            await trio.sleep(interval)
            try:
                valid = await self.host.still_valid(self._token, identity)
            except Exception:
                log.exception("re-checking the token of %s failed; keeping it", self.node_id)
                continue
            if not valid:
                self.close("token revoked")
                return

    async def _writer(self, scope: trio.CancelScope) -> None:
        outbox = self._outbox_receive
        async with outbox:
            async for item in outbox:
                if not await self._write(item, outbox):
                    break
        scope.cancel()

    async def _write(self, item: str | _Close,
                     outbox: trio.MemoryReceiveChannel[str | _Close]) -> bool:
        """Send `item`, then every frame already queued behind it; False when the
        writer is done (a goodbye sent, the connection lost, the outbox closed).
        Each send is a schedule point, so a queued frame is taken without the
        outbox's receive being another (one run-loop batch fewer a frame)."""
        while True:
            try:
                if isinstance(item, _Close):
                    await self.conn.send(encode(Error(item.reason)))
                    return False
                await self.conn.send(item)
            except ConnectionClosed as exc:
                self.close_reason = self.close_reason or exc.reason or "connection lost"
                return False
            try:
                item = outbox.receive_nowait()
            except trio.WouldBlock:
                return True
            except trio.EndOfChannel:
                return False

    async def _reader(self) -> None:
        host, max_bytes = self.host, self.config.max_frame_bytes
        while True:
            try:
                text = await self.conn.receive()
            except ConnectionClosed as exc:
                self.close_reason = self.close_reason or exc.reason or "disconnected"
                return
            try:
                message = decode(text, max_bytes)
            except ProtocolError as exc:
                self.protocol_error(str(exc))
                task_id = exc.task_id
                if (task_id is not None and exc.frame_type in ("result", "failed")
                        and self.tasks.holds(task_id)):
                    if not await host.report(self, Refused(task_id, str(exc))):
                        self.close("the coordinator is shutting down")
                        return
                continue
            if type(message) not in WORKER_MESSAGES or isinstance(message, Hello):
                self.protocol_error(f"unexpected {type(message).__name__.lower()} frame "
                                    "(already welcomed, or not a worker's message)")
                continue
            if isinstance(message, Progress):
                self._progress(message)
            elif isinstance(message, Accepted):
                self._accepted(message)
            elif isinstance(message, (Heartbeat, Result, Failed, Draining)):
                if isinstance(message, Heartbeat) and message.loaded is not None:
                    message = attrs.evolve(message, loaded=tuple(
                        _model_name(m) for m in message.loaded))
                if not await host.report(self, message):
                    self.close("the coordinator is shutting down")
                    return

    def _progress(self, message: Progress) -> None:
        if not self.tasks.holds(message.task_id):
            self.protocol_error(f"progress for task {message.task_id!r}, "
                                "which is not assigned to this node")
        else:
            self.host.progress(self, message)

    def _accepted(self, message: Accepted) -> None:
        if not self.tasks.accept(message.task_id):
            self.protocol_error(f"task {message.task_id!r} is not assigned to this node")

    def protocol_error(self, reason: str) -> None:
        """Answer a bad frame with `error`; close after too many (actor or reader)."""
        self.protocol_errors += 1
        if self.protocol_errors > self.config.max_protocol_errors:
            self.close(f"too many protocol errors (last: {reason})")
        else:
            self.deliver(Error(reason))
        log.debug("protocol error from %s (%s): %s", self.node_id, self.conn.remote, reason)


__all__ = ["NodeIdentity", "NodeReport", "NodeSession", "Refused", "SessionHost",
           "SessionLimits"]
