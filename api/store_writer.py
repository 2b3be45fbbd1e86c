# The writer actor both stores share (sqlite_writer.py, postgres_writer.py derive
# from StoreWriter): callers queue operations, the writer commits them in batches
# (group commit), and accepted work is never lost to a failure that may pass.
#
# Theory of operation: callers queue operations (a function of the database's
# connection) on a channel; the writer takes everything queued (up to MAX_BATCH),
# commits it (`commit_batch`, the database's own: one transaction, and should it
# fail, each operation alone, so a failure stays with its caller), then wakes the
# callers. Batches run one after the other, so the order of queued operations is
# the order of their effects. Each failed operation is sorted (`classify`):
#
# - transient: a failure that may pass (SQLite: the disk is full, an I/O error,
#   the lock held past the wait; PostgreSQL: no connection to the server, it is
#   down, restarting or unreachable). A waiting caller gets StoreUnavailable (the
#   API: 503). A posted change (the coordinator's task transitions: a completion)
#   is held, never dropped: kept in order in `held`, and retried with exponential
#   backoff (RETRY_FIRST_SECONDS doubling up to RETRY_MAX_SECONDS), up to
#   MAX_BATCH of them in one transaction (`commit_together`).
#   - Order: while anything is held, every newly posted change is held behind it,
#     so a task's changes are written in the order they were posted. An `ordered`
#     write (the store's barrier) waits its turn behind held changes the same way,
#     and is held rather than failed: it returns once everything queued before it
#     is written. An ordered operation must be idempotent (it may run twice).
#   - Bound: `held` holds at most `held_max` (HELD_MAX) changes; beyond it the
#     writer takes nothing new, so `post` and `write` wait: back-pressure, not loss.
#   - Health: the store is degraded (`health()`, so /health answers 503 with the
#     held count) from the first such failure until a write succeeds again with
#     nothing held; while degraded and with nothing held, the `probe` operation
#     (the database's own: a real write that changes nothing) is retried on the
#     same backoff, so recovery shows without waiting for traffic.
#   - A held change may be written twice when a failure left its commit's outcome
#     unknown (PostgreSQL: the connection broke during COMMIT). Task changes allow
#     that: a task row moves forward only, so a change already applied matches no
#     row the second time.
# - refused: the database refused the operation's values (a constraint, a value
#   it cannot hold). Retrying cannot help, so it is never held: a waiting caller
#   gets the error; a posted change is logged with its label (the task id),
#   counted (`refused_changes`), and replaced by the stand-in its poster gave
#   (`fallback`; the store's: the task fails, saying why), so a task never stays
#   `running` forever because its completion could not be stored. A refused
#   change among held ones is found by retrying that chunk one by one, in order.
# - fatal: the database cannot be used any more (SQLite: the file is corrupt, or
#   was deleted or replaced). Callers get StoreFailed, and `serve` raises it: the
#   process must stop so that a supervisor restarts it.
#
# Rules:
# - `post` queues without waiting; `write` waits for the commit. Order is kept.
# - At `finish`, held changes are retried for up to FINISH_SECONDS; what is still
#   held then is logged (those tasks are still open in the database: they run
#   again after the restart, none is lost).
# - A subclass gives the database's parts, all public methods: `commit_batch`,
#   `commit_together`, `classify`, `describe`, `unavailable`, `commit_stand_in`,
#   and optionally `check` (before each batch) and `fatal`.
from __future__ import annotations

import collections
import logging
import math
import time
from typing import Any, Callable, TypeVar

import attrs
import trio

from .records import StoreFailed, StoreHealth, StoreUnavailable

T = TypeVar("T")
Operation = Callable[[Any], Any]  # a function of the database's connection
MAX_BATCH = 512  # operations per group commit
QUEUE_SIZE = 10_000  # queued operations before `write`/`post` wait for room
HELD_MAX = 100_000  # held task changes, at most (about 1 KB each)
RETRY_FIRST_SECONDS = 0.05
RETRY_MAX_SECONDS = 2.0
FINISH_SECONDS = 10.0  # at shutdown, how long held changes are retried
log = logging.getLogger("neurogrid.store")


async def receive_batch(receive: trio.MemoryReceiveChannel[T], limit: int) -> list[T]:
    """Wait for one item, then take whatever else is queued already, up to `limit` in
    all (the group commit here, the relay's batched dispatch). Raises
    trio.EndOfChannel once the channel is closed and empty."""
    batch = [await receive.receive()]
    while len(batch) < limit:
        try:
            batch.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return batch


@attrs.define(eq=False)
class Pending:
    """One queued operation and, once committed (or failed), its outcome."""

    op: Operation
    done: trio.Event | None = None  # None: posted, nobody waits
    result: Any = None
    error: Exception | None = None
    label: str = ""  # what a posted operation is about (for the log)
    # a posted operation's stand-in should the database refuse it (given the error)
    fallback: Callable[[Exception], Operation] | None = None
    # waits its turn behind held changes, and is held itself rather than failed
    # (a barrier: "everything queued before me is written"); must be idempotent
    ordered: bool = False

    @property
    def holdable(self) -> bool:
        return self.done is None or self.ordered


class StoreWriter:
    """The writer actor (see above). Run `serve` in a nursery; `write` and `post`
    queue operations. `probe`: the operation retried while degraded with nothing
    held."""

    def __init__(self, probe: Operation, held_max: int = HELD_MAX) -> None:
        self.probe = probe
        self.held_max = held_max
        self.database = "the database"  # how messages name it (a subclass may say which)
        self.held: collections.deque[Pending] = collections.deque()
        # told (operations, seconds) of each batch committed (or failed): metrics
        self.on_commit: Callable[[int, float], None] | None = None
        self.batches = 0  # committed or failed, since the start: for tests and figures
        self._send, self._receive = trio.open_memory_channel[Pending](QUEUE_SIZE)
        self._retry_at = math.inf  # when held changes (or the probe) are tried again
        self._backoff = RETRY_FIRST_SECONDS
        self._reason = ""  # why the store is degraded; "" when it is not
        self._failed_writes = 0
        self._refused_changes = 0

    def health(self) -> StoreHealth:
        return StoreHealth(bool(self._reason), self._reason, len(self.held),
                           self._failed_writes, self._refused_changes)

    # ---- the database's parts (a subclass gives them) -----------------------------

    async def commit_batch(self, batch: list[Pending]) -> None:
        """Commit the batch; should that fail, each operation alone, so a failure
        stays with its caller (`pending.error`); results in `pending.result`."""
        raise NotImplementedError

    async def commit_together(self, batch: list[Pending]) -> None:
        """Commit the batch in one transaction, waiting for the database as long as
        a batch may; raises what failed, with nothing committed."""
        raise NotImplementedError

    def classify(self, error: BaseException) -> str:
        """'transient', 'refused' or 'fatal' (see above)."""
        raise NotImplementedError

    def describe(self, error: BaseException) -> str:
        """Why the store is degraded, from a transient `error` (for health)."""
        return str(error).strip()

    def unavailable(self, error: BaseException) -> StoreUnavailable:
        """What a waiting caller gets for a transient `error` (the store is degraded
        already: `health().reason` says why)."""
        return StoreUnavailable(f"the database cannot be written now: {self._reason}; "
                                "retry later")

    async def commit_stand_in(self, op: Operation) -> None:
        """Commit a refused change's stand-in at once; raises what failed."""
        raise NotImplementedError

    def check(self) -> None:
        """Before each batch: raise StoreFailed when the database is gone."""

    def fatal(self, error: BaseException) -> StoreFailed:
        """The StoreFailed for a fatal `error`."""
        if isinstance(error, StoreFailed):
            return error
        failed = StoreFailed(f"{self.database} cannot be used any more: {error}")
        failed.__cause__ = error
        return failed

    # ---- the actor ---------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        task_status.started()
        while True:
            try:
                batch = await self._next_batch()
            except trio.EndOfChannel:  # closed by `finish`
                break
            if batch:
                await self._run(batch)
            if trio.current_time() >= self._retry_at:
                await self._retry()
        await self._drain_held()

    async def _next_batch(self) -> list[Pending]:
        """The next batch; [] when it is time to retry first."""
        if len(self.held) >= self.held_max:  # take nothing new: writers wait
            await trio.sleep_until(self._retry_at)
            return []
        room = self.held_max - len(self.held)  # so that `held` never grows past the bound
        with trio.move_on_at(self._retry_at):
            return await receive_batch(self._receive, min(MAX_BATCH, room))
        return []

    async def _run(self, batch: list[Pending]) -> None:
        try:
            self.check()
        except StoreFailed as exc:
            self._wake(batch, exc)
            raise
        if self.held:  # posted changes wait behind the held ones: order per task
            self.held.extend(p for p in batch if p.holdable)
            batch = [p for p in batch if not p.holdable]
            if not batch:
                return
        started = time.perf_counter()
        await self.commit_batch(batch)
        self.batches += 1
        if self.on_commit is not None:
            self.on_commit(len(batch), time.perf_counter() - started)
        fatal: Exception | None = None
        transient = False
        for pending in batch:
            error = pending.error
            if error is None and pending.ordered and transient:
                self.held.append(pending)  # behind what was held before it (idempotent)
                continue
            if error is not None:
                self._failed_writes += 1
                kind = self.classify(error)
                if kind == "fatal":
                    fatal = fatal or error
                    pending.error = self.fatal(error)
                elif kind == "transient":
                    transient = True
                    self._degrade(error)
                    if pending.holdable:
                        pending.error = None
                        self.held.append(pending)
                        continue
                    pending.error = self.unavailable(error)
                    pending.error.__cause__ = error
                elif pending.done is None:
                    await self._refuse(pending, error)
            if pending.done is not None:
                pending.done.set()
        if fatal is not None:
            raise self.fatal(fatal)
        if not transient:
            if self.held:  # the database takes writes again: write what is held now
                self._retry_at = min(self._retry_at, trio.current_time())
            else:
                self._recover()

    async def _retry(self) -> None:
        """Try the held changes (in order) again, or the probe while degraded."""
        chunk = [self.held[i] for i in range(min(len(self.held), MAX_BATCH))]
        attempt = chunk or [Pending(self.probe)]
        try:
            await self.commit_together(attempt)
        except Exception as exc:
            kind = self.classify(exc)
            if kind == "fatal":
                raise self.fatal(exc) from exc
            if kind == "transient" or not chunk:
                self._degrade(exc)
                return
            if not await self._retry_one_by_one(chunk):
                return
        else:
            for _ in chunk:
                self._written(self.held.popleft())
        if self.held:
            self._retry_at = trio.current_time()  # more to write: go on at once
        else:
            self._recover()

    async def _retry_one_by_one(self, chunk: list[Pending]) -> bool:
        """A chunk with a refused change in it: each alone, in order, up to the first
        transient failure. True when the whole chunk is done with."""
        for pending in chunk:
            try:
                await self.commit_together([pending])
            except Exception as exc:
                kind = self.classify(exc)
                if kind == "fatal":
                    raise self.fatal(exc) from exc
                if kind == "transient":
                    self._degrade(exc)
                    return False
                if pending.done is None:
                    await self._refuse(pending, exc)
                else:
                    pending.error = exc
            self._written(self.held.popleft())
        return True

    @staticmethod
    def _written(pending: Pending) -> None:
        """A held operation is done with: wake its caller, if it has one."""
        if pending.done is not None:
            pending.done.set()

    async def _drain_held(self) -> None:
        with trio.move_on_after(FINISH_SECONDS):
            while self.held:
                await trio.sleep_until(self._retry_at)
                await self._retry()
        if self.held:
            log.error("%d task changes could not be written before shutdown (%s); those "
                      "tasks are still open in the database and run again after the "
                      "restart", len(self.held), self._reason)
            self._wake(list(self.held), StoreUnavailable(
                f"the database could not be written before shutdown: {self._reason}"))

    # ---- the state ------------------------------------------------------------------

    def _degrade(self, error: BaseException) -> None:
        reason = self.describe(error)
        if not self._reason:
            log.error("the database cannot be written (%s): degraded; held task changes "
                      "are retried", reason)
        self._reason = reason or type(error).__name__
        now = trio.current_time()
        self._retry_at = now + self._backoff
        self._backoff = min(RETRY_MAX_SECONDS, self._backoff * 2)

    def _recover(self) -> None:
        if self._reason:
            log.warning("the database takes writes again: recovered (was: %s)", self._reason)
        self._reason = ""
        self._retry_at = math.inf
        self._backoff = RETRY_FIRST_SECONDS

    async def _refuse(self, pending: Pending, error: Exception) -> None:
        """A posted operation the database refused: logged, counted, and replaced by
        its fallback (committed at once; it fails only if the database does)."""
        self._refused_changes += 1
        log.error("a posted store write failed: the database refused it (%s): %s",
                  pending.label or "no label", error, exc_info=error)
        if pending.fallback is None:
            return
        try:
            await self.commit_stand_in(pending.fallback(error))
        except Exception:
            log.exception("the stand-in of a refused write (%s) failed too", pending.label)

    def _wake(self, batch: list[Pending], error: Exception) -> None:
        for pending in batch:
            if pending.done is not None:
                pending.error = error
                pending.done.set()

    # ---- callers -----------------------------------------------------------------------

    def queue_nowait(self, pending: Pending) -> None:
        """Queue `pending` if there is room; raises trio.WouldBlock when there is
        none, trio.ClosedResourceError after `finish`."""
        self._send.send_nowait(pending)

    async def write(self, op: Operation, ordered: bool = False) -> Any:
        """Queue `op` and wait for its commit: its result, or what it raised
        (StoreUnavailable for a failure that may pass). `ordered`: committed only
        after every change held before it, and held itself (so waiting until the
        database takes writes again) rather than failed by a transient error."""
        pending = Pending(op, trio.Event(), ordered=ordered)
        try:  # no extra trip through the scheduler: done.wait() is the checkpoint
            self._send.send_nowait(pending)
        except trio.WouldBlock:
            await self._send.send(pending)
        assert pending.done is not None
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result

    async def post(self, op: Operation, label: str = "",
                   fallback: Callable[[Exception], Operation] | None = None) -> None:
        """Queue `op` without waiting for its commit; should it fail for a reason
        that may pass, it is held and retried (see above); should the database
        refuse its values, `fallback(error)` is committed instead."""
        await self._send.send(Pending(op, label=label, fallback=fallback))

    async def finish(self) -> None:
        """No more writes: `serve` commits what is queued (and held), then returns."""
        await self._send.aclose()


__all__ = ["FINISH_SECONDS", "HELD_MAX", "MAX_BATCH", "Operation", "Pending", "QUEUE_SIZE",
           "RETRY_FIRST_SECONDS", "RETRY_MAX_SECONDS", "StoreWriter", "receive_batch"]
