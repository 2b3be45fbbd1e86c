# The services of `neurogrid serve --role api` and `--role coordinator`: several
# processes on one PostgreSQL database (the channels between them are
# postgres_cluster.py's; the roles and their apps, roles.py).
#
# Theory of operation.
# - An API process (serve_api_services) has no scheduler. A submission is admitted
#   and stored through the database (DatabaseIntake: shared limits, the task row
#   and its inbox row in one transaction), a cancellation is written to the task's
#   row by the API process itself (forward only, so it cannot undo an end) and
#   queued for the coordinator to stop the work. Network status, health and the
#   models' availability read the network the leader publishes (NetworkElsewhere);
#   a worker that connects here is told where the leader is. SSE subscribers are
#   fed from LISTEN (status changes from the tasks table's trigger, streamed
#   output from the leader); a task followed here whose end a lost notification
#   did not bring is found by `settle_followed`, which reads those rows.
# - A coordinator process (serve_coordinator_services) stands by until it holds
#   the leader lock (`lead`). Then it opens the scheduler, drains the inbox,
#   reloads every open task from the database (running ones re-queued: their
#   workers were the old leader's), records its worker URL as the leader's, and
#   follows the inbox; its task changes go to the store through the same
#   UpdateWriter as in one process, streamed output also to NOTIFY (ClusterFeed);
#   it publishes the network each NETWORK_PUBLISH_SECONDS. Losing the lock's
#   connection is LeadershipLost: the services fail and the process exits
#   non-zero (a supervisor restarts it as a standby).
#
# Rules:
# - An API process rides out a database that is away for a moment (its requests
#   answer 503, as in one process); a leader does not: any store error in its own
#   actors ends the process (exit 1), and a standby takes over.
# - Every accepted task is a committed row; the leader is the only process that
#   runs tasks; a task's row moves forward only, so a task ends exactly once
#   whatever the old and new leaders write.
# - Quotes in an API process are made on the nodes the leader published, as if
#   each were idle (their queues are the leader's): the estimate a client sees
#   before the task runs; the charge is the leader's, as always.
from __future__ import annotations

import json
import logging
from typing import Any, Callable

import attrs
import psycopg
import trio

from engine.core import MODELS, NetworkSnapshot, NodeJoined, NodeSpec, Quote, TaskSpec, TokenBucket
from engine.protocol import Connection, ConnectionClosed, Error, encode
from engine.runtime import CoordinatorConfig, open_coordinator, NodeIdentity

from .access import Admission, Caller, RateLimiter
from .app import (
    HOUSEKEEPING_SECONDS, NO_HOOKS, housekeeping, node_identity, package_version, sign_of_life,
)
from .postgres_cluster import (
    INBOX_BATCH, Cluster, Leadership, Listener, open_cluster,
)
from .relay import AdmissionRefused, Dispatcher, TaskFeed, UpdateWriter
from .services import ApiConfig, Services
from .store import (
    OPEN_STATES, Blob, DuplicateTaskId, IdempotencyKeyTaken, IdempotencyRecord, StoreError,
    TaskChange, TaskRow, open_store, receive_batch,
)
from .transitions import ServiceHooks

log = logging.getLogger("neurogrid.cluster")

NETWORK_PUBLISH_SECONDS = 1.0  # the leader writes the network this often
NETWORK_READ_SECONDS = 1.0  # other processes read it this often
STALE_NETWORK_SECONDS = 10.0  # older than this: no leader publishes, no nodes shown
INBOX_POLL_SECONDS = 1.0  # the leader claims the inbox at least this often
SETTLE_SECONDS = 2.0  # an API process re-reads the tasks its SSE clients follow
HELLO_WAIT_SECONDS = 5.0
PROGRESS_BACKLOG = 10_000  # streamed output waiting for NOTIFY; beyond: dropped


class NetworkElsewhere:
    """The network where this process is not its coordinator (an API process, a
    standby): the snapshot the leader last published, quotes without nodes, and
    every worker turned away to the leader."""

    def __init__(self, config: CoordinatorConfig, cluster: Cluster, what: str) -> None:
        self.config, self.cluster, self.what = config, cluster, what
        self.empty = config.make_scheduler()  # no nodes: the empty network
        self.scheduler = self.empty  # the published nodes, idle: what quotes are made on
        self.mirrored: tuple[Any, ...] = ()
        self.published: NetworkSnapshot | None = None
        self.weights: dict[str, dict[str, str]] = {}
        self.leader = ""
        self.leader_run = 0  # the leader's run in the service history (availability)

    def snapshot(self) -> NetworkSnapshot:
        return self.published if self.published is not None else self.empty.snapshot()

    def mirror(self, snapshot: NetworkSnapshot | None) -> None:
        """Quote on the published nodes: a scheduler of its own that they joined
        (each with room for the models it announced, all its slots free)."""
        nodes = [n for n in (snapshot.nodes if snapshot is not None else ()) if not n.draining]
        key = tuple((n.node_id, n.gpu, n.models, n.slots, n.price_per_hour) for n in nodes)
        if key == self.mirrored:
            return
        scheduler = self.config.make_scheduler()
        for n in nodes:
            vram = max((MODELS[m].vram_gb for m in n.models if m in MODELS), default=0.0)
            scheduler.handle(NodeJoined(NodeSpec(n.node_id, n.gpu, vram, n.models, n.slots,
                                                 n.price_per_hour, n.region, n.loaded, n.name,
                                                 n.location)), 0.0)
        self.scheduler, self.mirrored = scheduler, key

    def node_weights(self) -> dict[str, dict[str, str]]:
        return self.weights

    def quote(self, spec: TaskSpec) -> Quote:
        return self.scheduler.quote(spec)

    async def refresh(self, now: float) -> None:
        self.published, self.weights = await self.cluster.network(now, STALE_NETWORK_SECONDS)
        self.mirror(self.published)
        self.leader, self.leader_run = await self.cluster.leader()

    async def follow(self, clock: Callable[[], float], services: Services | None = None
                     ) -> None:
        """Refresh every NETWORK_READ_SECONDS; with `services` (an API process), its
        run is the leader's (availability counts the leader's time up)."""
        while True:
            try:
                await self.refresh(clock())
            except Exception as exc:  # the database away for a moment: the last view stays
                log.warning("cannot read the network's state: %s", exc)
            if services is not None:
                services.run_id = self.leader_run
            await trio.sleep(NETWORK_READ_SECONDS)

    async def serve_connection(self, conn: Connection) -> None:
        """Answer a worker's hello with a "not the leader" error naming the leader."""
        where = f"; the leader is at {self.leader}" if self.leader else (
            "; no leader is known yet")
        try:
            with trio.move_on_after(HELLO_WAIT_SECONDS):
                await conn.receive()
            await conn.send(encode(Error(f"not the leader: this is {self.what}{where}",
                                         retry=True, leader=self.leader)))
            await conn.aclose("not the leader")
        except ConnectionClosed:
            pass


class DatabaseIntake:
    """relay.Intake through the database: shared admission and the inbox
    (postgres_cluster.Cluster.submit_op); the cancellation written here."""

    def __init__(self, cluster: Cluster, limiter: RateLimiter) -> None:
        self.cluster = cluster
        self.limiter = limiter  # this process's view of the buckets (X-RateLimit on reads)

    async def submit(self, caller: Caller, row: TaskRow, fresh_id: Callable[[], str],
                     files: tuple[Blob, ...], idempotency: IdempotencyRecord | None,
                     now: float, spec: TaskSpec | None = None) -> tuple[TaskRow, Admission]:
        # `spec` is not needed: the coordinator reads the row from the database
        writer = self.cluster.store.writer
        try:
            outcome = await writer.write(self.cluster.submit_op(caller, row, idempotency,
                                                                files, now))
        except psycopg.errors.UniqueViolation:  # the id is taken: a second draw settles it
            row = attrs.evolve(row, id=fresh_id())
            if idempotency is not None:
                idempotency = attrs.evolve(idempotency, task_id=row.id)
            try:
                outcome = await writer.write(self.cluster.submit_op(caller, row, idempotency,
                                                                    files, now))
            except psycopg.errors.UniqueViolation as exc:
                raise DuplicateTaskId(f"task id {row.id!r} already exists") from exc
        admission = outcome.admission
        if outcome.bucket is not None:
            self.limiter.buckets[caller.owner] = TokenBucket(*outcome.bucket)
        if not admission.allowed:
            raise AdmissionRefused(admission)
        if outcome.held is not None:
            raise IdempotencyKeyTaken(outcome.held)
        return row, admission

    async def cancel(self, task_id: str, now: float) -> bool:
        cancelled: bool = await self.cluster.store.writer.write(
            self.cluster.cancel_op(task_id, now))
        return cancelled


class ClusterFeed(TaskFeed):
    """The leader's feed: its own subscribers, and streamed output to NOTIFY for the
    API processes' (status changes reach them through the tasks table's trigger)."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__()
        self.cluster = cluster
        self._send, self._receive = trio.open_memory_channel[tuple[str, dict[str, Any]]](
            PROGRESS_BACKLOG)
        self.dropped = 0  # progress not sent: the database fell behind

    def publish_progress(self, task_id: str, progress: dict[str, Any]) -> None:
        super().publish_progress(task_id, progress)
        try:
            self._send.send_nowait((task_id, progress))
        except trio.WouldBlock:  # lossy by design, never a backlog without bound
            self.dropped += 1

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        task_status.started()
        while True:
            batch = await receive_batch(self._receive, INBOX_BATCH)
            try:
                await self.cluster.notify_progress(batch)
            except Exception as exc:  # lossy by design: the result carries it all
                log.warning("streamed output not sent: %s", exc)


def feed_notifications(feed: TaskFeed, clock: Callable[[], float]
                       ) -> Callable[[str, str], None]:
    """A Listener's `on_notify` that publishes task notifications to `feed`."""
    def on_notify(channel: str, payload: str) -> None:
        try:
            note = json.loads(payload)
            task_id = note["task"]
            if "progress" in note:
                feed.publish_progress(task_id, note["progress"])
            else:
                feed.publish_state(task_id, TaskChange(task_id, note["status"], clock()))
        except (ValueError, KeyError, TypeError):
            log.warning("a task notification that is not one: %.100r", payload)

    return on_notify


async def settle_followed(services: Services, cluster: Cluster) -> None:
    """Every SETTLE_SECONDS, the end of each task an SSE client here follows, read
    from its row (a notification lost with a broken connection is not waited for)."""
    while True:
        await trio.sleep(SETTLE_SECONDS)
        followed = services.feed.subscribed()
        if not followed:
            continue
        try:
            statuses = await cluster.statuses(followed)
        except StoreError as exc:  # the database away for a moment: next time
            log.warning("cannot read the followed tasks: %s", exc)
            continue
        for task_id, status in statuses.items():
            if status not in OPEN_STATES:
                services.feed.publish_state(task_id, TaskChange(task_id, status,
                                                                services.now()))


async def api_housekeeping(services: Services, cluster: Cluster) -> None:
    """Each HOUSEKEEPING_SECONDS: forget full buckets, here and in the database."""
    while True:
        await trio.sleep(HOUSEKEEPING_SECONDS)
        now = services.now()
        services.limiter.prune(now)
        try:
            await cluster.prune_buckets(now)
        except StoreError as exc:  # the database away for a moment: next time
            log.warning("cannot prune the rate-limit buckets: %s", exc)


async def serve_api_services(config: ApiConfig, stop: trio.Event, *,
                             hooks: ServiceHooks = NO_HOOKS,
                             task_status: trio.TaskStatus[Services] = trio.TASK_STATUS_IGNORED
                             ) -> None:
    """The api role: HTTP over the database, no scheduler (see the top)."""
    async with open_store(config.db) as store:
        cluster = await open_cluster(store)
        store.observe_commits(hooks.on_commit)
        limiter, feed = RateLimiter(), TaskFeed()
        away = NetworkElsewhere(config.coordinator, cluster, "an API process")
        await away.refresh(config.clock())
        services = Services(config, store, away, limiter, feed, None, config.clock(),
                            package_version(), intake=DatabaseIntake(cluster, limiter))
        listener = Listener(cluster.store.url, [cluster.task_channel],
                            feed_notifications(feed, config.clock))
        async with trio.open_nursery() as nursery:
            await nursery.start(listener.serve)
            nursery.start_soon(away.follow, config.clock, services)
            nursery.start_soon(settle_followed, services, cluster)
            nursery.start_soon(api_housekeeping, services, cluster)
            for actor in hooks.actors:
                nursery.start_soon(actor, services)
            task_status.started(services)
            await stop.wait()
            nursery.cancel_scope.cancel()


async def follow_inbox(cluster: Cluster, dispatcher: Dispatcher, limiter: RateLimiter,
                       wake: Callable[[], trio.Event]) -> None:
    """Hand the inbox's new tasks to the dispatcher and carry out its cancellations,
    as they come (woken by NOTIFY; at least each INBOX_POLL_SECONDS)."""
    while True:
        woken = wake()
        batch = await cluster.claim_inbox()
        for row in batch.tasks:
            if not limiter.is_open(row.id):  # not handed over already (at takeover)
                dispatcher.hand_over(row)
        for task_id in batch.cancels:
            if limiter.is_open(task_id):
                await dispatcher.cancel(task_id)
        if batch.claimed < INBOX_BATCH:
            with trio.move_on_after(INBOX_POLL_SECONDS):
                await woken.wait()


async def publish_network(cluster: Cluster, services: Services) -> None:
    coordinator = services.coordinator
    while True:
        await cluster.publish_network(coordinator.snapshot(), coordinator.node_weights(),
                                      services.now())
        await trio.sleep(NETWORK_PUBLISH_SECONDS)


@attrs.define
class Wakeup:
    """An event that NOTIFY sets; `fresh()` replaces it (before looking)."""

    event: trio.Event = attrs.field(factory=trio.Event)

    def fresh(self) -> trio.Event:
        self.event = trio.Event()
        return self.event

    def ring(self, channel: str = "", payload: str = "") -> None:
        self.event.set()


async def lead(services: Services, cluster: Cluster, leadership: Leadership,
               feed: ClusterFeed, hooks: ServiceHooks) -> None:
    """Stand by until this process holds the leader lock, then lead until it is
    lost (LeadershipLost) or the services stop."""
    config, store = services.config, services.store
    await leadership.acquire()
    log.info("this coordinator leads now: reloading the open tasks")

    async def verify_token(token: str) -> NodeIdentity | None:
        name = await store.find_node_token(token)
        return node_identity(name) if name is not None else None

    writer = UpdateWriter(store, services.limiter, feed, config.clock, hooks.task_watchers)
    coordinator_config = attrs.evolve(config.coordinator, publish_accepted=False)
    wakeup = Wakeup()
    inbox = Listener(cluster.store.url, [cluster.inbox_channel], wakeup.ring, wakeup.ring)
    async with open_coordinator(coordinator_config, verify_token=verify_token,
                                on_update=writer) as coordinator:
        dispatcher = Dispatcher(coordinator, store, services.limiter, config.clock, writer,
                                hooks.on_dispatch)
        async with trio.open_nursery() as nursery:
            await nursery.start(inbox.serve)  # listening before the drain: nothing missed
            await cluster.drain_inbox()
            reloaded = await store.reopen_tasks()
            for row in reloaded:
                dispatcher.hand_over(row)
            services.coordinator, services.dispatcher = coordinator, dispatcher
            services.run_id = await store.start_run(services.now())
            if not config.advertise_url:
                await services.listening.wait()  # the server is binding its port
            url = config.advertise_url or services.worker_url
            await cluster.become_leader(url, services.now())
            log.info("leading at %s with %d open task(s)", url, len(reloaded))
            await nursery.start(dispatcher.serve)
            nursery.start_soon(follow_inbox, cluster, dispatcher, services.limiter,
                               wakeup.fresh)
            nursery.start_soon(publish_network, cluster, services)
            nursery.start_soon(housekeeping, services)
            await leadership.hold()  # raises LeadershipLost: the services fail


async def serve_coordinator_services(
        config: ApiConfig, stop: trio.Event, *, hooks: ServiceHooks = NO_HOOKS,
        task_status: trio.TaskStatus[Services] = trio.TASK_STATUS_IGNORED) -> None:
    """The coordinator role: a standby until it leads (see the top)."""
    async with open_store(config.db) as store:
        cluster = await open_cluster(store)
        store.observe_commits(hooks.on_commit)
        limiter, feed = RateLimiter(), ClusterFeed(cluster)
        away = NetworkElsewhere(config.coordinator, cluster, "a standby coordinator")
        await away.refresh(config.clock())
        services = Services(config, store, away, limiter, feed, None, config.clock(),
                            package_version(), intake=DatabaseIntake(cluster, limiter))
        leadership = Leadership(cluster.store.url, cluster.lock_key)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(feed.serve)
                nursery.start_soon(away.follow, config.clock)
                nursery.start_soon(lead, services, cluster, leadership, feed, hooks)
                for actor in hooks.actors:
                    nursery.start_soon(actor, services)
                task_status.started(services)
                await stop.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(leadership.close)
        if services.run_id:
            await sign_of_life(services)


__all__ = [
    "ClusterFeed", "DatabaseIntake", "NetworkElsewhere", "Wakeup", "feed_notifications",
    "follow_inbox", "lead", "publish_network", "serve_api_services",
    "serve_coordinator_services", "settle_followed",
]
