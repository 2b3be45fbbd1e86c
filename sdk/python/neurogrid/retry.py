# When to try a request again, and after how long: pure decisions, no I/O. Time
# (the wall clock, for a Retry-After date) and randomness (the jitter) come in as
# arguments, so the policy is tested without sleeping.
#
# Rules:
# - At most `max_retries` retries after the first attempt; then the last outcome
#   stands (the error is raised).
# - A transport failure (refused, dropped, timed out) is retried with exponential
#   backoff: base * 2**attempt, capped at backoff_max, with "equal jitter" (half
#   fixed, half random) so that many clients dropped together do not return together.
# - 429 and 503 are retried after the server's Retry-After (delta-seconds or an
#   HTTP date); without one, after the backoff. A Retry-After longer than
#   max_retry_after is not waited for: the error is raised at once, so a spent
#   hourly budget never blocks a caller for an hour.
# - 502 and 504 (a proxy in front of the server failed) are retried with backoff.
#   Every other status is final.
# - Every request is safe to retry: reads and cancels are idempotent, and a submit
#   carries one Idempotency-Key over all its attempts, so the server answers a
#   repeated submit with the first task (see protocol.py).
from __future__ import annotations

import email.utils
from dataclasses import dataclass
from typing import Mapping

RETRY_AFTER_STATUSES = frozenset({429, 503})
BACKOFF_STATUSES = frozenset({502, 504})


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, not {self.max_retries}")
        if not 0 < self.backoff_base <= self.backoff_max:
            raise ValueError("backoff_base must be positive and at most backoff_max "
                             f"(got {self.backoff_base} and {self.backoff_max})")
        if self.max_retry_after < 0:
            raise ValueError(f"max_retry_after must be 0 or more, not {self.max_retry_after}")

    def backoff(self, attempt: int, jitter: float) -> float:
        """Seconds before retry number `attempt` (0-based); jitter in [0, 1)."""
        ceiling = min(self.backoff_max, self.backoff_base * 2.0 ** attempt)
        return ceiling / 2 + ceiling / 2 * jitter

    def after_failure(self, attempt: int, jitter: float) -> float | None:
        """After a transport failure: seconds to wait, or None to give up."""
        return self.backoff(attempt, jitter) if attempt < self.max_retries else None

    def after_status(self, attempt: int, status: int, headers: Mapping[str, str],
                     wall_now: float, jitter: float) -> float | None:
        """After an answer with `status` (headers with lowercase names): seconds to
        wait, or None when the answer is final."""
        if attempt >= self.max_retries:
            return None
        if status in RETRY_AFTER_STATUSES:
            wait = retry_after_seconds(headers.get("retry-after"), wall_now)
            if wait is None:
                return self.backoff(attempt, jitter)
            return wait if wait <= self.max_retry_after else None
        if status in BACKOFF_STATUSES:
            return self.backoff(attempt, jitter)
        return None


def retry_after_seconds(value: str | None, wall_now: float) -> float | None:
    """A Retry-After header as seconds from `wall_now` (unix time); None when absent
    or unreadable. A date in the past is 0."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - wall_now)


__all__ = ["RetryPolicy", "retry_after_seconds"]
