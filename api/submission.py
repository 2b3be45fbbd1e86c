# Creating a task: the one path every submission takes, whichever route it came
# by (POST /api/tasks, the OpenAI-compatible /v1 routes): parse the body against
# the model's task kind, quote, admit the caller, commit the row and queue it for
# the coordinator (relay.Intake: the dispatcher in one process, the database's
# inbox in the api role).
#
# Rules:
# - Order of checks: the body is valid (400), the caller may submit (429), then
#   the row is written. A refused request writes nothing and spends nothing.
# - A task is committed before its id is returned (the dispatcher hands it to
#   the coordinator after that), so an update about it always finds its row.
# - `create_task` knows nothing of HTTP: the caller is identified by the route,
#   and the answer's shape is the route's (views.task_created for the reference,
#   openai_compat.py for /v1).
#
# Idempotency (the `Idempotency-Key` header; the SDKs send one on every submit and
# reuse it on retries):
# - A key is 1 to 255 printable ASCII characters (`idempotency_key`), scoped to
#   its owner (the API key, or the anonymous caller's address): two callers never
#   share one. It holds for IDEMPOTENCY_TTL_SECONDS (24 h); an older key is
#   ignored and purged.
# - A request with a live key the owner holds answers with the task that key
#   created (`Created.replayed`): nothing is written, no budget is spent, and the
#   route answers in the first answer's shape. The task is shown as it is now.
# - A request is identified by `request_hash`: SHA-256 of a scope (the route, so
#   a key reused on another route is not a repeat) and the canonical JSON of the
#   parsed body (sorted keys, no spaces), so key order and whitespace do not
#   matter. The same key with another hash is a 409 and writes nothing.
# - The key is stored in the same transaction as the task row
#   (Store.insert_task), so a task and its key are committed together or not at
#   all. Two concurrent requests with one key both miss the lookup; the one that
#   loses the race at the insert (IdempotencyKeyTaken) is answered as a replay of
#   the winner's task (its spent submission is not refunded: a rare race).
from __future__ import annotations

import hashlib
import json
import secrets
import string
from typing import Any, Mapping

import attrs

from engine.core import TaskState
from engine.core.pricing import Quote

from .access import Admission, Caller
from .errors import ApiError
from .media import input_files
from .relay import AdmissionRefused, spec_of, task_spec
from .services import Services
from .store import IdempotencyKeyTaken, IdempotencyRecord, TaskRow
from .validation import InvalidRequest, parse_task

__all__ = [
    "Created", "ID_ALPHABET", "ID_RANDOM_CHARS", "IDEMPOTENCY_HEADER", "MAX_IDEMPOTENCY_KEY",
    "REPLAYED_HEADER", "create_task", "idempotency_key", "new_id", "request_hash",
]

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"  # "true" on an answer that repeats an earlier one
MAX_IDEMPOTENCY_KEY = 255

ID_ALPHABET = string.ascii_lowercase + string.digits
ID_RANDOM_CHARS = 12  # 36**12 ids per second: collisions are not a practical concern


def new_id(prefix: str, now: float) -> str:
    """`task_1698234567_abc123`-style ids: prefix, unix seconds, random part."""
    number = int.from_bytes(secrets.token_bytes(8), "big")  # 64 random bits
    chars = []
    for _ in range(ID_RANDOM_CHARS):  # 36**12 > 2**62: nearly all of them show
        number, digit = divmod(number, 36)
        chars.append(ID_ALPHABET[digit])
    return f"{prefix}_{int(now)}_{''.join(chars)}"


def idempotency_key(header: str | None) -> str | None:
    """The Idempotency-Key header's value, checked (None when absent)."""
    if header is None:
        return None
    if not 1 <= len(header) <= MAX_IDEMPOTENCY_KEY or not all(" " <= c <= "~" for c in header):
        raise InvalidRequest(f"The '{IDEMPOTENCY_HEADER}' header must be 1 to "
                             f"{MAX_IDEMPOTENCY_KEY} printable ASCII characters "
                             f"(it has {len(header)})")
    return header


def request_hash(body: Mapping[str, Any], scope: str = "") -> str:
    """What identifies a request for idempotency: SHA-256 (hex) of the scope and
    the body's canonical JSON."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{scope}\n{canonical}".encode()).hexdigest()


@attrs.frozen
class Created:
    """A submission's outcome: the task as stored, its quote, and whether it is
    the answer to an earlier request with the same idempotency key (`replayed`)."""

    row: TaskRow
    quote: Quote
    replayed: bool = False
    admission: Admission | None = None  # the caller's budget after this submission


async def create_task(services: Services, caller: Caller, body: Mapping[str, Any], *,
                      idempotency_key: str | None = None, body_hash: str | None = None
                      ) -> Created:
    """Parse, admit, quote and store a task of `caller` (InvalidRequest: 400;
    ApiError 429 when the caller's limits refuse it, 409 when `idempotency_key`
    was used with another request). With a key the caller used before for the same
    request (`body_hash`, by default `request_hash(body)`), the earlier task,
    `replayed`."""
    s = services
    task, files = await input_files(parse_task(body))
    now = s.now()
    record = None
    if idempotency_key is not None:
        record = IdempotencyRecord(caller.owner, idempotency_key,
                                   body_hash if body_hash is not None else request_hash(body),
                                   "", now)
        held = await s.store.find_idempotency_key(caller.owner, idempotency_key, now)
        if held is not None:
            return await _replay(s, held, record)
    task_id, priority, params = new_id("task", now), task.priority.label, task.params()
    spec = spec_of(task_id, caller.owner, task.model, priority, task.prompt, params,
                   task.verify)
    quote = s.coordinator.quote(spec)
    row = TaskRow(task_id, caller.owner, task.model, priority, task.prompt, params,
                  TaskState.QUEUED.value, now, quote.estimated_cost, quote.estimated_seconds,
                  quote.openai_cost, verify=task.verify)
    # Admitted by the intake (relay.Intake), counted in flight from before the
    # insert: concurrent submissions cannot all pass the check.
    assert s.intake is not None, "the services give every role an intake"
    try:
        row, admission = await s.intake.submit(
            caller, row, lambda: new_id("task", now), files,
            attrs.evolve(record, task_id=row.id) if record is not None else None, now, spec)
    except AdmissionRefused as refused:
        admission = refused.admission
        raise ApiError(429, "Rate limit exceeded", admission.reason,
                       admission.headers()) from None
    except IdempotencyKeyTaken as taken:  # a concurrent request with the key won
        assert record is not None
        return await _replay(s, taken.existing, record)
    return Created(row, quote, False, admission)


async def _replay(s: Services, held: IdempotencyRecord, request: IdempotencyRecord) -> Created:
    """The answer to a repeated request: the task its key holds (409 when the key
    came with another request)."""
    if held.body_hash != request.body_hash:
        raise ApiError(409, "Idempotency key reused",
                       f"the {IDEMPOTENCY_HEADER} {held.key[:100]!r} was used for another "
                       f"request (task {held.task_id}); send a new key for a new request")
    row = await s.store.get_task(held.task_id)
    if row is None:  # stored in one transaction with its key: cannot happen
        raise ApiError(500, "Internal server error",
                       f"task {held.task_id} of idempotency key {held.key[:100]!r} is missing")
    return Created(row, s.coordinator.quote(task_spec(row)), True, None)
