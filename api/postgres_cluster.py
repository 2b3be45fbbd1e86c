# Several NeuroGrid processes on one PostgreSQL database: what they share and how
# they tell each other (`neurogrid serve --role api|coordinator`, api/roles.py).
#
# Theory of operation. The database is the only channel between processes:
#
#   API process --(task row + inbox row, one transaction; NOTIFY inbox)--> database
#   leader coordinator --(claims inbox rows: DELETE ... FOR UPDATE SKIP LOCKED)--> its
#       scheduler; its task changes --> tasks rows (a trigger NOTIFYs each status
#       change); streamed output --> NOTIFY; the network as it sees it --> network_state
#   API processes --(LISTEN)--> their SSE subscribers; --(read)--> network status
#
# Rules:
# - The truth is the `tasks` table: an inbox row only says "look at this task".
#   A coordinator that takes over drains the inbox first, then reloads every open
#   task (Store.reopen_tasks), so a task accepted at any moment is handed over by
#   one of the two (the follower skips ids it holds already). Losing an inbox row
#   (a leader that died after claiming it) loses nothing.
# - One leader: a session-level advisory lock (pg_try_advisory_lock, keyed by the
#   schema's name) held on a connection of its own. The lock lives exactly as long
#   as that connection: a leader that dies (SIGKILL included) has its connection
#   closed by the kernel and the server, and a standby's next try takes it. A
#   leader that finds its lock connection broken has lost leadership and must stop
#   (LeadershipLost): it cannot know whether another has taken over. The
#   connection's TCP keepalives are short, so the server also notices a leader
#   that vanished without closing within seconds.
# - Admission is shared: a submission's rate-limit bucket (`rate_buckets`, row
#   locked FOR UPDATE: the owner's submissions are serialized), its owner's
#   in-flight count (the owner's open task rows) and the insert are one
#   transaction, judged by the same access.RateLimiter as in one process: a key's
#   hourly quota and in-flight limit hold across every API process, exactly.
#   A submission or cancellation locks the totals row first (TOTALS_FIRST), so
#   API processes' transactions do not deadlock each other; one that deadlocks
#   with a coordinator's (which locks task rows, then the totals) is rolled back
#   by PostgreSQL and tried again by its writer (postgres_writer.commit_each). The
#   in-flight count reads the owner's open rows (an index of open tasks by
#   owner), up to the limit: a bounded scan.
# - Notifications are per schema (the channel names end in the schema's name), so
#   several deployments (or tests) share a database without hearing each other.
#   They are hints, never the only record: a status change is in its row, and an
#   SSE route reads the row when its feed ends; streamed output is lossy anyway.
#   A progress payload over NOTIFY_LIMIT bytes is dropped (the result has it all).
# - Each blocking call runs in a worker thread (psycopg's sync API, as the store).
from __future__ import annotations

import json
import logging
import os
import socket
from typing import Any, Callable, Iterable

import attrs
import psycopg
import trio
from psycopg.rows import dict_row

from engine.core import MeasuredSpeed, NetworkSnapshot, NodeSnapshot, TokenBucket

from .access import Admission, Caller, RateLimiter
from .postgres_schema import TASK_CHANNEL, connect
from .postgres_store import PostgresStore
from .postgres_writer import Connection
from .records import OPEN_STATES, Blob, IdempotencyRecord, StoreError, TaskChange, TaskRow
from .store import Store

log = logging.getLogger("neurogrid.cluster")

LEADER_LOCK = "neurogrid.leader."  # + the schema's name: the advisory lock's key
INBOX_CHANNEL = "neurogrid_inbox."  # + the schema's name: new inbox rows
LEADER_POLL_SECONDS = 0.5  # a standby tries the lock this often
LEADER_CHECK_SECONDS = 0.5  # a leader checks its lock connection this often
LISTEN_WAIT_SECONDS = 0.5  # a listener's wait in its thread (bounds a shutdown)
RECONNECT_SECONDS = 1.0
NOTIFY_LIMIT = 7900  # PostgreSQL's payload limit is 8000 bytes
INBOX_BATCH = 256
# the lock connection: the server notices a vanished leader in ~5 + 2 x 2 s
LOCK_KEEPALIVES: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                   "keepalives_count": 2}
OPEN_LIST = ", ".join(f"'{s}'" for s in sorted(OPEN_STATES))
# Every transaction that adds or ends a task updates the one `task_totals` row (its
# triggers). Taking that row's lock before any other (a bucket, a task row) keeps
# two API processes' transactions from locking the same two rows in opposite
# orders; the lock is held to the commit either way, so it costs no concurrency.
TOTALS_FIRST = "SELECT 1 FROM task_totals WHERE id = 1 FOR UPDATE"


class LeadershipLost(RuntimeError):
    """The leader's lock connection broke: another coordinator may lead now."""


@attrs.frozen
class Submitted:
    """A shared submission's outcome: the admission (refused: nothing written) and,
    when the idempotency key was taken already, the record that holds it."""

    admission: Admission
    held: IdempotencyRecord | None = None
    # the owner's bucket as it stands now: (capacity, rate, tokens, updated)
    bucket: tuple[float, float, float, float] | None = None


@attrs.frozen
class InboxBatch:
    """What a coordinator claimed from the inbox: the open tasks to hand over
    (oldest first) and the ids whose cancellation an API process wrote."""

    tasks: tuple[TaskRow, ...]
    cancels: tuple[str, ...]
    claimed: int


def postgres_store(store: Store) -> PostgresStore:
    if not isinstance(store, PostgresStore):
        raise StoreError("several processes (--role api or coordinator) share a PostgreSQL "
                         "database: give --db postgresql://USER@HOST/DB")
    return store


def snapshot_json(snapshot: NetworkSnapshot) -> dict[str, Any]:
    return attrs.asdict(snapshot)


def snapshot_from_json(data: dict[str, Any]) -> NetworkSnapshot:
    nodes = tuple(NodeSnapshot(**{
        **n, "models": tuple(n["models"]), "loaded": tuple(n["loaded"]),
        "measured": tuple(MeasuredSpeed(**m) for m in n.get("measured", ()))})
        for n in data["nodes"])
    return NetworkSnapshot(nodes=nodes, queued=data["queued"], running=data["running"],
                           queued_by_model=data["queued_by_model"],
                           nodes_by_model=data["nodes_by_model"], counters=data["counters"],
                           utilization=data["utilization"])


class Cluster:
    """The shared parts of one deployment's schema. Build with `open_cluster`."""

    def __init__(self, store: PostgresStore, schema: str) -> None:
        self.store, self.schema = store, schema
        self.task_channel = TASK_CHANNEL + schema
        self.inbox_channel = INBOX_CHANNEL + schema
        self.lock_key = LEADER_LOCK + schema

    # ---- the API side ---------------------------------------------------------------

    def submit_op(self, caller: Caller, row: TaskRow, idempotency: IdempotencyRecord | None,
                  blobs: tuple[Blob, ...], now: float) -> Callable[[Connection], Submitted]:
        """Admit (shared limits), insert the task (its files, its key) and queue it in
        the inbox, in the writer's transaction. A task id taken raises UniqueViolation."""
        insert = self.store.insert_op(row, idempotency)
        add_blobs = self.store.blobs_op(row.id, blobs) if blobs else None
        owner = caller.owner

        def op(conn: Connection) -> Submitted:
            # the totals row first (TOTALS_FIRST), then the bucket, created full when
            # new, and locked (the DO UPDATE locks it)
            bucket = conn.execute(
                f"WITH totals AS ({TOTALS_FIRST}) INSERT INTO rate_buckets (owner, capacity, "
                "tokens, updated_at) SELECT %s, %s, %s, %s FROM totals ON CONFLICT (owner) "
                "DO UPDATE SET owner = excluded.owner RETURNING capacity, tokens, updated_at",
                (owner, caller.per_hour, caller.per_hour, now)).fetchone()
            # a statement of its own: its snapshot is taken once the lock is held;
            # counted up to the limit only (all the check needs: a bounded scan)
            counted = conn.execute(f"SELECT COUNT(*) AS n FROM (SELECT 1 FROM tasks WHERE "
                                   f"owner = %s AND status IN ({OPEN_LIST}) LIMIT %s) flying",
                                   (owner, caller.in_flight)).fetchone()
            assert bucket is not None and counted is not None
            capacity = bucket["capacity"]
            limiter = RateLimiter(
                buckets={owner: TokenBucket(capacity, capacity / 3600.0, bucket["tokens"],
                                            bucket["updated_at"])},
                in_flight={owner: counted["n"]} if counted["n"] else {})
            admission = limiter.admit(caller, now)
            if not admission.allowed:
                return Submitted(admission)
            held = insert(conn)
            if held is not None:  # a replay: nothing spent
                return Submitted(admission, held)
            spent = limiter.buckets[owner]
            if add_blobs is not None:
                add_blobs(conn)
            conn.execute(  # spend, queue for the coordinator, wake it: one statement
                "WITH spent AS (UPDATE rate_buckets SET capacity = %s, tokens = %s, "
                "updated_at = %s WHERE owner = %s), queued AS (INSERT INTO task_inbox "
                "(kind, task_id) VALUES ('submit', %s)) SELECT pg_notify(%s, '')",
                (spent.capacity, spent.tokens, spent.updated, owner, row.id,
                 self.inbox_channel))
            return Submitted(admission, None, (spent.capacity, spent.rate, spent.tokens,
                                               spent.updated))

        return op

    def queue(self, conn: Connection, kind: str, task_id: str) -> None:
        conn.execute("WITH queued AS (INSERT INTO task_inbox (kind, task_id) VALUES (%s, %s)) "
                     "SELECT pg_notify(%s, '')", (kind, task_id, self.inbox_channel))

    def cancel_op(self, task_id: str, now: float) -> Callable[[Connection], bool]:
        """Write a task's cancellation (forward only: False when it had ended) and
        tell the coordinator to stop its work."""
        change = self.store.change_op(TaskChange(task_id, "cancelled", now))

        def op(conn: Connection) -> bool:
            conn.execute(TOTALS_FIRST)
            if change(conn) is None:
                return False
            self.queue(conn, "cancel", task_id)
            return True

        return op

    async def prune_buckets(self, now: float) -> None:
        """Forget buckets that have refilled (a full bucket is the same as none)."""
        def op(conn: Connection) -> None:
            conn.execute("DELETE FROM rate_buckets WHERE tokens + (%s - updated_at) * "
                         "capacity / 3600.0 >= capacity", (now,))

        await self.store.writer.write(op)

    async def network(self, now: float, stale_after: float
                      ) -> tuple[NetworkSnapshot | None, dict[str, dict[str, str]]]:
        """The network as the leader last published it (None when it is older than
        `stale_after` seconds, or was never published), and its nodes' weights."""
        def query(conn: Connection) -> dict[str, Any] | None:
            return conn.execute("SELECT snapshot, weights, updated_at FROM network_state "
                                "WHERE id = 1").fetchone()

        row = await self.store.read(query)
        if row is None or now - row["updated_at"] > stale_after:
            return None, {}
        return snapshot_from_json(row["snapshot"]), row["weights"]

    async def statuses(self, task_ids: list[str]) -> dict[str, str]:
        """The status of each of these tasks (one query)."""
        def query(conn: Connection) -> dict[str, str]:
            return {r["id"]: r["status"] for r in conn.execute(
                "SELECT id, status FROM tasks WHERE id = ANY(%s)", (task_ids,)).fetchall()}

        return await self.store.read(query)

    async def leader(self) -> tuple[str, int]:
        """The URL the current (or last) leader advertised ("" when none ever led)
        and its run in the service history (0: none)."""
        def query(conn: Connection) -> tuple[str, int]:
            row = conn.execute("SELECT url, (SELECT MAX(id) FROM service_runs) AS run "
                               "FROM coordinator_leader WHERE id = 1").fetchone()
            return (row["url"], row["run"] or 0) if row is not None else ("", 0)

        return await self.store.read(query)

    # ---- the coordinator side ------------------------------------------------------

    async def claim_inbox(self, limit: int = INBOX_BATCH) -> InboxBatch:
        """Take up to `limit` inbox rows (rows another claimer holds are skipped) and
        read the open tasks they name."""
        def op(conn: Connection) -> InboxBatch:
            claimed = conn.execute(
                "DELETE FROM task_inbox WHERE seq IN (SELECT seq FROM task_inbox ORDER BY seq "
                "LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING seq, kind, task_id",
                (limit,)).fetchall()
            claimed.sort(key=lambda r: r["seq"])
            submits = [r["task_id"] for r in claimed if r["kind"] == "submit"]
            rows = conn.execute(f"SELECT * FROM tasks WHERE id = ANY(%s) AND status IN "
                                f"({OPEN_LIST}) ORDER BY seq", (submits,)).fetchall() if (
                submits) else []
            return InboxBatch(tuple(TaskRow(**r) for r in rows),
                              tuple(r["task_id"] for r in claimed if r["kind"] == "cancel"),
                              len(claimed))

        batch: InboxBatch = await self.store.writer.write(op)
        return batch

    async def drain_inbox(self) -> int:
        """Empty the inbox (a new leader, before it reloads the open tasks)."""
        def op(conn: Connection) -> int:
            return conn.execute("DELETE FROM task_inbox").rowcount

        drained: int = await self.store.writer.write(op)
        return drained

    async def publish_network(self, snapshot: NetworkSnapshot,
                              weights: dict[str, dict[str, str]], now: float) -> None:
        data = json.dumps(snapshot_json(snapshot))

        def op(conn: Connection) -> None:
            conn.execute("INSERT INTO network_state (id, snapshot, weights, updated_at) VALUES "
                         "(1, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET snapshot = "
                         "excluded.snapshot, weights = excluded.weights, updated_at = "
                         "excluded.updated_at", (data, json.dumps(weights), now))

        await self.store.writer.write(op)

    async def become_leader(self, url: str, now: float) -> None:
        """Record this process as the leader, reachable by workers at `url`."""
        holder = f"{socket.gethostname()}:{os.getpid()}"

        def op(conn: Connection) -> None:
            conn.execute("INSERT INTO coordinator_leader (id, url, holder, since) VALUES "
                         "(1, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET url = excluded.url, "
                         "holder = excluded.holder, since = excluded.since", (url, holder, now))

        await self.store.writer.write(op)

    async def notify_progress(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Send streamed output (task id, partial) to the API processes; one
        transaction for the batch. Too large a partial is dropped."""
        payloads = []
        for task_id, partial in items:
            text = json.dumps({"task": task_id, "progress": partial}, ensure_ascii=False)
            if len(text.encode()) <= NOTIFY_LIMIT:
                payloads.append((self.task_channel, text))

        def op(conn: Connection) -> None:
            with conn.cursor() as cursor:
                cursor.executemany("SELECT pg_notify(%s, %s)", payloads)

        if payloads:
            await self.store.writer.post(op)


# ---- dedicated connections: the listener and the leader's lock -------------------


class Listener:
    """LISTENs on `channels` over a connection of its own and hands each
    notification (channel, payload) to `on_notify`, on the loop; reconnects when the
    connection breaks, then calls `on_reconnect` (what was sent meanwhile is lost)."""

    def __init__(self, url: str, channels: Iterable[str],
                 on_notify: Callable[[str, str], None],
                 on_reconnect: Callable[[], None] = lambda: None) -> None:
        self.url, self.channels = url, tuple(channels)
        self.on_notify, self.on_reconnect = on_notify, on_reconnect

    def _open(self) -> Connection:
        conn = connect(self.url)
        for channel in self.channels:
            conn.execute(f'LISTEN "{channel}"'.encode())
        return conn

    @staticmethod
    def _wait(conn: Connection) -> list[tuple[str, str]]:
        return [(n.channel, n.payload) for n in conn.notifies(timeout=LISTEN_WAIT_SECONDS)]

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        conn = await trio.to_thread.run_sync(self._open)
        task_status.started()
        try:
            while True:
                try:
                    for channel, payload in await trio.to_thread.run_sync(self._wait, conn):
                        self.on_notify(channel, payload)
                    continue
                except psycopg.OperationalError as exc:
                    log.warning("the notification connection broke (%s); reconnecting",
                                str(exc).strip())
                await trio.to_thread.run_sync(conn.close)
                while True:
                    await trio.sleep(RECONNECT_SECONDS)
                    try:
                        conn = await trio.to_thread.run_sync(self._open)
                        break
                    except psycopg.OperationalError:
                        continue
                self.on_reconnect()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(conn.close)


class Leadership:
    """The leader's advisory lock on a connection of its own: `acquire` waits until
    this process holds it, `hold` watches the connection and raises LeadershipLost
    when it breaks."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.conn: Connection | None = None

    def _try(self) -> bool:
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(self.url, autocommit=True, row_factory=dict_row,
                                        **LOCK_KEEPALIVES)
            # the server side of the same: it releases the lock of a vanished leader
            self.conn.execute("SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; "
                              "SET tcp_keepalives_count = 2")
        row = self.conn.execute("SELECT pg_try_advisory_lock(hashtext(%s)) AS held",
                                (self.key,)).fetchone()
        return bool(row and row["held"])

    async def acquire(self) -> None:
        """Wait until this process leads (a standby tries every LEADER_POLL_SECONDS)."""
        while True:
            try:
                if await trio.to_thread.run_sync(self._try):
                    return
            except psycopg.OperationalError as exc:
                log.warning("standby: cannot try the leader lock: %s", str(exc).strip())
                await trio.to_thread.run_sync(self.close)
            await trio.sleep(LEADER_POLL_SECONDS)

    def _check(self) -> None:
        assert self.conn is not None
        self.conn.execute("SELECT 1")

    async def hold(self) -> None:
        """Return never; raise LeadershipLost when the lock's connection breaks."""
        while True:
            await trio.sleep(LEADER_CHECK_SECONDS)
            try:
                await trio.to_thread.run_sync(self._check)
            except psycopg.OperationalError as exc:
                raise LeadershipLost(f"the leader lock's connection broke: "
                                     f"{str(exc).strip()}") from exc

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


async def open_cluster(store: Store) -> Cluster:
    """The cluster view of an open PostgreSQL store (StoreError for another kind)."""
    pg = postgres_store(store)

    def query(conn: Connection) -> str:
        row = conn.execute("SELECT current_schema() AS name").fetchone()
        assert row is not None
        return str(row["name"])

    return Cluster(pg, await pg.read(query))


__all__ = [
    "Cluster", "INBOX_CHANNEL", "InboxBatch", "LEADER_LOCK", "LeadershipLost", "Leadership",
    "Listener", "Submitted", "open_cluster", "postgres_store", "snapshot_from_json",
    "snapshot_json",
]
