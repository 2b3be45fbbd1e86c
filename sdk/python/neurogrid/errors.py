# The SDK's exceptions. Every error the API answers carries the reference's error
# object, {"success": false, "error", "details", "timestamp"}; the exception keeps it
# (`body`) and its parts (`error`, `details`, `status_code`, `headers`).
#
# Rules:
# - One class per answered status the API documents, chosen from STATUS_ERRORS by
#   status code (data, not an if-chain); any other 4xx is an APIError, any 5xx a
#   ServerError.
# - Failures to talk to the server at all (refused, dropped, timed out) are
#   NeuroGridConnectionError, also a builtin ConnectionError; waiting longer than a
#   caller allowed is NeuroGridTimeoutError, also a builtin TimeoutError.
# - A task that ended without a result (failed, cancelled, rejected, expired) is
#   TaskFailedError, carrying the task as the server last showed it.
from __future__ import annotations

import json
from typing import Any, Mapping


class NeuroGridError(Exception):
    """Base of every exception this SDK raises."""


class APIError(NeuroGridError):
    """The server answered with an error status."""

    def __init__(self, status_code: int, error: str, details: str,
                 body: Mapping[str, Any] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status_code} {error}: {details}")
        self.status_code = status_code
        self.error = error
        self.details = details
        self.body: Mapping[str, Any] = body if body is not None else {}
        self.headers: Mapping[str, str] = headers if headers is not None else {}

    @property
    def timestamp(self) -> str | None:
        value = self.body.get("timestamp")
        return value if isinstance(value, str) else None


class BadRequestError(APIError):
    """400: invalid request parameters; `details` names the field and why."""


class AuthenticationError(APIError):
    """401: the API key is missing, unknown or revoked."""


class NotFoundError(APIError):
    """404: no such task (or another key's task)."""


class ConflictError(APIError):
    """409: e.g. cancelling a task that has already ended."""


class RateLimitError(APIError):
    """429: the caller's hourly budget or in-flight limit is spent."""

    @property
    def retry_after(self) -> str | None:
        return self.headers.get("retry-after")


class ServerError(APIError):
    """5xx: the server failed to answer."""


class NeuroGridConnectionError(NeuroGridError, ConnectionError):
    """The server could not be reached, or the connection dropped, after every retry."""


class NeuroGridTimeoutError(NeuroGridError, TimeoutError):
    """A wait took longer than the caller allowed."""


class TaskFailedError(NeuroGridError):
    """The task ended without a result; `task` is its last view, `status` its state."""

    def __init__(self, task: Mapping[str, Any]) -> None:
        status = str(task.get("status"))
        reason = task.get("error") or "no reason given"
        super().__init__(f"task {task.get('id')} ended {status}: {reason}")
        self.task = task
        self.status = status


STATUS_ERRORS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    429: RateLimitError,
}


def error_from_reply(status_code: int, headers: Mapping[str, str], body: bytes) -> APIError:
    """The typed exception for an error answer. A body that is not the reference's
    error object (a proxy's HTML page, say) keeps its first characters in `details`."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("details"), str):
        error, details = str(parsed.get("error") or ""), parsed["details"]
    else:
        parsed = {}
        error, details = f"HTTP {status_code}", body[:200].decode("utf-8", "replace")
    default = ServerError if status_code >= 500 else APIError
    kind = STATUS_ERRORS.get(status_code, default)
    return kind(status_code, error, details, parsed, headers)


__all__ = [
    "APIError", "AuthenticationError", "BadRequestError", "ConflictError",
    "NeuroGridConnectionError", "NeuroGridError", "NeuroGridTimeoutError", "NotFoundError",
    "RateLimitError", "STATUS_ERRORS", "ServerError", "TaskFailedError", "error_from_reply",
]
