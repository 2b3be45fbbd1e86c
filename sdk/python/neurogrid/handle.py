# What a task handle knows without asking the server: its id, the answer to its
# submission, the last view of it the client saw, and what follows from those (its
# cost, its response, its image's URL). The sync and async handles (client.py,
# async_client.py) add the calls that ask the server, each a line over these.
from __future__ import annotations

import time
from dataclasses import dataclass

from .errors import NeuroGridError, TaskFailedError
from .types import FINAL_STATUSES, Submission, TaskView

IMAGE_URL_PREFIXES = ("http://", "https://", "/")


@dataclass(frozen=True)
class Cost:
    """A task's price: the quote at submission ("$0.001" as the reference writes it,
    and in USD), what OpenAI would have charged, and, once the task ended, what it
    actually cost (None until then)."""
    estimated: str | None
    estimated_usd: float | None
    openai: str | None
    savings: str | None
    actual_usd: float | None


def deadline_after(timeout: float | None) -> float | None:
    """A deadline on the monotonic clock, `timeout` seconds from now (None: none)."""
    if timeout is None:
        return None
    if timeout < 0:
        raise ValueError(f"timeout must be 0 or more seconds, not {timeout}")
    return time.monotonic() + timeout


class TaskHandleCore:
    def __init__(self, task_id: str, submission: Submission | None = None) -> None:
        self.task_id = task_id
        self.submission = submission
        self.last: TaskView | None = None  # the latest view of the task this handle saw

    def __repr__(self) -> str:
        status = self.last["status"] if self.last else (
            self.submission["status"] if self.submission else "unknown")
        return f"<{type(self).__name__} {self.task_id} {status}>"

    @property
    def done(self) -> bool:
        """Whether this handle has seen the task end (no I/O)."""
        return self.last is not None and self.last["status"] in FINAL_STATUSES

    def observe(self, view: TaskView) -> TaskView:
        self.last = view
        return view

    @property
    def cost(self) -> Cost:
        quote = self.submission["cost"] if self.submission else None
        estimated_usd = quote.get("estimated_usd") if quote else None
        if estimated_usd is None and self.last is not None:
            estimated_usd = self.last.get("estimated_cost")
        return Cost(
            estimated=quote["estimated"] if quote else None,
            estimated_usd=estimated_usd,
            openai=quote["comparison"]["openai"] if quote else None,
            savings=quote["comparison"]["savings"] if quote else None,
            actual_usd=self.last["cost"] if self.done and self.last is not None else None,
        )

    def response_of(self, view: TaskView) -> str:
        """The result of an ended task; TaskFailedError when it has none."""
        if view["status"] != "completed":
            raise TaskFailedError(view)
        return view["result"] or ""

    def image_url(self, view: TaskView) -> str:
        result = self.response_of(view)
        if not result.startswith(IMAGE_URL_PREFIXES):
            raise NeuroGridError(f"task {self.task_id}'s result is not an image URL: "
                                 f"{result[:80]!r}")
        return result


__all__ = ["Cost", "IMAGE_URL_PREFIXES", "TaskHandleCore", "deadline_after"]
