# Creating a task: the one path every submission takes, whichever route it came
# by (POST /api/tasks, the OpenAI-compatible /v1 routes): parse the body against
# the model's task kind, admit the caller, quote, commit the row and queue it for
# the coordinator (relay.Dispatcher.submit).
#
# Rules:
# - Order of checks: the body is valid (400), the caller may submit (429), then
#   the row is written. A refused request writes nothing and spends nothing.
# - A task is committed before its id is returned (the dispatcher hands it to
#   the coordinator after that), so an update about it always finds its row.
# - `create_task` knows nothing of HTTP: the caller is identified by the route,
#   and the answer's shape is the route's (views.task_created for the reference,
#   openai_compat.py for /v1).
from __future__ import annotations

import secrets
import string
from typing import Any, Mapping

import attrs

from engine.core import TaskState
from engine.core.pricing import Quote

from .access import Admission, Caller
from .errors import ApiError
from .relay import task_spec
from .services import Services
from .store import TaskRow
from .validation import parse_task

__all__ = ["Created", "ID_ALPHABET", "ID_RANDOM_CHARS", "create_task", "new_id"]

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


@attrs.frozen
class Created:
    """A submission's outcome: the task as stored, its quote, and whether it is
    the answer to an earlier request with the same idempotency key (`replayed`)."""

    row: TaskRow
    quote: Quote
    replayed: bool = False
    admission: Admission | None = None  # the caller's budget after this submission


async def create_task(services: Services, caller: Caller, body: Mapping[str, Any], *,
                      idempotency_key: str | None = None) -> Created:
    """Parse, admit, quote and store a task of `caller` (InvalidRequest: 400;
    ApiError 429 when the caller's limits refuse it)."""
    s = services
    task = parse_task(body)
    now = s.now()
    admission = s.limiter.admit(caller, now)
    if not admission.allowed:
        raise ApiError(429, "Rate limit exceeded", admission.reason, admission.headers())
    row = TaskRow(
        new_id("task", now), caller.owner, task.model, task.priority.label, task.prompt,
        task.params(), TaskState.QUEUED.value, now, 0.0, 0.0, 0.0,
    )
    quote = s.coordinator.quote(task_spec(row))
    row = attrs.evolve(row, estimated_cost=quote.estimated_cost,
                       estimated_seconds=quote.estimated_seconds, openai_cost=quote.openai_cost)
    # Counted in flight from before the insert: concurrent submissions cannot all
    # pass the check.
    row = await s.dispatcher.submit(row, lambda: new_id("task", now))
    return Created(row, quote, False, admission)
