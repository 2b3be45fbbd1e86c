"""Callers, tiers and rate limits (pure: time is passed in)."""
from __future__ import annotations

import pytest

from api.access import DEFAULT_TIERS, AuthError, Caller, RateLimiter, identify
from api.store import KeyRecord


class Keys:
    def __init__(self, **records: KeyRecord) -> None:
        self.records = records

    async def find_key(self, secret: str) -> KeyRecord | None:
        return self.records.get(secret)


PREMIUM = KeyRecord("key_1", "premium", "p", None, None, 0.0, None)
CUSTOM = KeyRecord("key_2", "beta", "c", 5, 1, 0.0, None)


async def test_identify_by_key_or_address() -> None:
    keys = Keys(good=PREMIUM, custom=CUSTOM)
    anonymous = await identify(None, "10.0.0.1", keys, False, DEFAULT_TIERS)
    assert (anonymous.owner, anonymous.per_hour, anonymous.in_flight) == ("anon:10.0.0.1", 100, 10)
    assert await identify("Bearer good", "x", keys, True, DEFAULT_TIERS) == Caller(
        "key:key_1", "premium", 1000, 50, "key_1")
    assert (await identify("bearer  custom ", "x", keys, False, DEFAULT_TIERS)).per_hour == 5
    for header in ("Bearer bad", "Token good", "Bearer "):
        with pytest.raises(AuthError):
            await identify(header, "x", keys, False, DEFAULT_TIERS)
    with pytest.raises(AuthError):
        await identify(None, "x", keys, True, DEFAULT_TIERS)


def test_the_hourly_budget_is_a_bucket_of_the_tier_size() -> None:
    limiter, caller = RateLimiter(), Caller("anon:a", "beta", 100, 1000)
    verdicts = [limiter.admit(caller, 0.0) for _ in range(101)]
    assert all(v.allowed for v in verdicts[:100]) and not verdicts[100].allowed
    refused = verdicts[100]
    assert refused.retry_after == pytest.approx(36.0) and refused.remaining == 0
    assert refused.headers()["Retry-After"] == "36"
    assert refused.headers()["X-RateLimit-Reset"] == "3600"
    assert limiter.admit(caller, 36.0).allowed
    other = Caller("anon:b", "beta", 100, 1000)
    assert limiter.admit(other, 36.0).allowed  # budgets are per caller


def test_in_flight_tasks_are_limited_and_released_once() -> None:
    limiter, caller = RateLimiter(), Caller("key:k", "beta", 100, 2)
    for task_id in ("t1", "t2"):
        assert limiter.admit(caller, 0.0).allowed
        limiter.task_opened(task_id, caller.owner)
    refused = limiter.admit(caller, 0.0)
    assert not refused.allowed and refused.remaining == 98  # refusal spent nothing
    limiter.task_closed("t1")
    limiter.task_closed("t1")
    assert limiter.in_flight == {"key:k": 1}
    assert limiter.admit(caller, 0.0).allowed


def test_refilled_buckets_are_pruned() -> None:
    limiter, caller = RateLimiter(), Caller("anon:a", "beta", 100, 10)
    limiter.admit(caller, 0.0)
    assert limiter.peek(caller, 0.0).remaining == 99
    limiter.prune(10.0)
    assert "anon:a" in limiter.buckets
    limiter.prune(40.0)  # refilled after 36 s: forgotten
    assert limiter.buckets == {}
