# The store's vocabulary: the values the API passes to and gets from persistence,
# and the `Store` protocol itself. store.py opens an implementation by URL (the
# SQLite one, and every line of SQL, is in sqlite_store.py and sqlite_schema.py)
# and re-exports all of this.
#
# Rules: frozen attrs values; wall-clock unix times; secrets only ever as
# `hash_secret` digests. Every method is async, reads included, so that an
# implementation may reach its database over the network.
from __future__ import annotations

import hashlib
import secrets
from typing import Any, Callable, Protocol

import attrs

OPEN_STATES = ("queued", "running")
FAILED_STATES = ("failed", "expired")


class StoreError(Exception):
    """A write the store refused; the message says why."""


class DuplicateTaskId(StoreError):
    pass


class StoreUnavailable(StoreError):
    """The database cannot take writes now (disk full, I/O error, locked past the
    wait): this write failed, later ones may not. The API answers 503."""


class StoreFailed(StoreError):
    """The store cannot continue (its file was deleted, replaced or corrupted):
    the process must stop, so that a supervisor restarts it."""


@attrs.frozen
class StoreHealth:
    """The store's state as /health reports it. `degraded`: the last write failed
    for a reason that may pass (`reason` says which); `held_changes`: task changes
    that could not be written yet, held in order and retried; `failed_writes`:
    every write that failed since start (its caller got an error, or it was held);
    `refused_changes`: posted task changes the database refused for their values
    (logged with the task id: retrying cannot help)."""

    degraded: bool = False
    reason: str = ""
    held_changes: int = 0
    failed_writes: int = 0
    refused_changes: int = 0


# How long an idempotency key holds: a repeated request within this time answers
# with the first one's task; an older key is ignored (and purged).
IDEMPOTENCY_TTL_SECONDS = 24 * 3600.0


@attrs.frozen
class IdempotencyRecord:
    """A client's idempotency key, stored with the task its first request created.
    `body_hash` identifies that request's body (the same key with another body is
    a conflict, not a repeat)."""

    owner: str
    key: str
    body_hash: str
    task_id: str
    created_at: float


class IdempotencyKeyTaken(StoreError):
    """`insert_task` with a key the owner holds already (a live one): nothing was
    inserted; `existing` is the record that holds it."""

    def __init__(self, existing: IdempotencyRecord) -> None:
        super().__init__(f"idempotency key {existing.key[:100]!r} is taken by task "
                         f"{existing.task_id}")
        self.existing = existing


@attrs.frozen
class TaskRow:
    id: str
    owner: str  # "key:<key id>" or "anon:<client address>"
    model: str
    priority: str
    prompt: str
    params: dict[str, Any]
    status: str
    created_at: float
    estimated_cost: float
    estimated_seconds: float
    openai_cost: float
    started_at: float | None = None
    completed_at: float | None = None
    node_id: str | None = None
    node_location: str | None = None
    node_gpu: str | None = None
    result: str | None = None
    error: str | None = None
    cost: float = 0.0
    tokens_used: int = 0
    processing_time: float = 0.0
    content_type: str | None = None  # of the result: None for text, "image/png" for images
    model_weights: str | None = None  # the weights that ran, as the node named them
    finish_reason: str | None = None  # why generation ended, as the runner said ("stop", "length")
    prompt_tokens: int = 0  # of tokens_used, those of the prompt (as the node counted them)
    verify: str = "none"  # the verification asked for: none | sampled | always
    # how the result fared under verification, a JSON object (views.verification_view)
    verification: str | None = None
    # who counted the usage it is billed by: "coordinator", or "node, bounded" when the
    # coordinator had no tokenizer for the node's weights (engine.core.metering)
    metered_by: str | None = None
    seq: int = 0  # the store's insertion order; 0 before insertion (the last field)


@attrs.frozen
class TaskChange:
    """A forward move of one task, as the coordinator reports it. Fields left None
    keep their stored value."""

    task_id: str
    status: str
    at: float
    node_id: str | None = None
    node_location: str | None = None
    node_gpu: str | None = None
    result: str | None = None
    error: str | None = None
    cost: float | None = None
    tokens_used: int | None = None
    processing_time: float | None = None
    openai_cost: float | None = None
    content_type: str | None = None
    model_weights: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    verification: str | None = None  # JSON text (TaskRow.verification)
    metered_by: str | None = None


def refused_change(change: TaskChange, error: Exception) -> TaskChange:
    """The stand-in of a posted `change` the database refused (`error`): the task
    fails, saying why, rather than staying open because its change cannot be stored."""
    return TaskChange(change.task_id, "failed", change.at,
                      error=f"the task's {change.status} update could not be stored: {error}")


MAX_BLOB_BYTES = 32 * 1024 * 1024  # one stored file of a task (an image, an audio input)


@attrs.frozen
class Blob:
    """A file that belongs to a task: its input audio, its output image."""

    name: str  # e.g. "image.png", "input.audio"
    content_type: str
    data: bytes = attrs.field(repr=lambda data: f"<{len(data)} bytes>")

    def __attrs_post_init__(self) -> None:
        if len(self.data) > MAX_BLOB_BYTES:
            raise StoreError(f"{self.name} is {len(self.data)} bytes; a task's file may have "
                             f"at most {MAX_BLOB_BYTES}")


@attrs.frozen
class KeyRecord:
    id: str
    tier: str
    name: str
    per_hour: int | None  # None: the tier's limit
    in_flight: int | None
    created_at: float
    revoked_at: float | None


@attrs.frozen
class NodeTokenRecord:
    name: str
    created_at: float
    revoked_at: float | None


@attrs.frozen
class Signup:
    id: str
    email: str
    type: str
    source: str
    created_at: float


@attrs.frozen
class NodeRecord:
    id: str
    name: str
    gpu: str
    location: str
    first_seen: float
    last_seen: float
    tasks_processed: int


@attrs.frozen
class Stats:
    """Totals over every task (and signup) the store holds."""

    total_tasks: int = 0
    completed_tasks: int = 0
    failed_tasks: int = 0  # failed or expired
    cancelled_tasks: int = 0
    compute_seconds: float = 0.0  # processing time of completed tasks
    turnaround_seconds: float = 0.0  # created -> completed, summed over completed tasks
    cost: float = 0.0  # charged, completed tasks
    openai_cost: float = 0.0  # the same work at OpenAI prices, completed tasks
    beta_signups: int = 0


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


class Store(Protocol):
    """What the API needs of persistence. Writes are durable when awaited
    (`post_task_change` only queues; `barrier` waits for what is queued); reads see
    every write awaited before them."""

    async def insert_task(self, row: TaskRow,
                          idempotency: IdempotencyRecord | None = None) -> None: ...
    async def find_idempotency_key(self, owner: str, key: str,
                                   now: float) -> IdempotencyRecord | None: ...
    async def change_task(self, change: TaskChange) -> bool: ...
    async def post_task_change(self, change: TaskChange, blobs: tuple[Blob, ...] = ()) -> None: ...
    async def put_blobs(self, task_id: str, blobs: tuple[Blob, ...]) -> None: ...
    async def get_blob(self, task_id: str, name: str) -> Blob | None: ...
    async def reopen_tasks(self) -> list[TaskRow]: ...
    async def barrier(self) -> None: ...
    def observe_commits(self, observer: Callable[[int, float], None] | None) -> None: ...
    async def get_task(self, task_id: str) -> TaskRow | None: ...
    async def list_tasks(self, owner: str, limit: int, after_seq: int | None,
                         status: str | None) -> list[TaskRow]: ...
    async def create_key(self, tier: str, name: str, per_hour: int | None,
                         in_flight: int | None, now: float) -> tuple[str, KeyRecord]: ...
    async def revoke_key(self, key_id: str, now: float) -> bool: ...
    async def find_key(self, secret: str) -> KeyRecord | None: ...
    async def list_keys(self) -> list[KeyRecord]: ...
    async def create_node_token(self, name: str, now: float) -> str: ...
    async def revoke_node_token(self, name: str, now: float) -> bool: ...
    async def find_node_token(self, token: str) -> str | None: ...
    async def list_node_tokens(self) -> list[NodeTokenRecord]: ...
    async def add_signup(self, signup: Signup) -> tuple[Signup, bool]: ...
    async def nodes(self) -> dict[str, NodeRecord]: ...
    async def stats(self) -> Stats: ...
    async def start_run(self, now: float) -> int: ...
    async def mark_alive(self, run_id: int, now: float) -> None: ...
    async def availability(self, now: float, current_run: int) -> float: ...
    async def health(self) -> StoreHealth: ...


__all__ = [
    "Blob", "DuplicateTaskId", "FAILED_STATES", "IDEMPOTENCY_TTL_SECONDS", "IdempotencyKeyTaken",
    "IdempotencyRecord", "KeyRecord", "MAX_BLOB_BYTES", "NodeRecord", "NodeTokenRecord",
    "OPEN_STATES", "Signup", "Stats", "Store", "StoreError", "StoreFailed", "StoreHealth",
    "StoreUnavailable", "TaskChange", "TaskRow",
    "hash_secret", "new_secret", "refused_change",
]
