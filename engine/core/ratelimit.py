# A token bucket: `capacity` tokens, refilled continuously at `rate` tokens per
# second; a request takes one. Pure: time is an argument, so the API, the
# simulator and the tests drive it alike.
#
# `try_take` answers whether the request may pass, how many tokens are left, and
# how long until one more token is there (the HTTP Retry-After) and until the bucket
# is full again (X-RateLimit-Reset).
from __future__ import annotations

import math

import attrs


@attrs.frozen
class Verdict:
    allowed: bool
    remaining: int  # whole tokens left after this request
    retry_after: float  # seconds until the next token (0 when allowed)
    reset_after: float  # seconds until the bucket is full


@attrs.define
class TokenBucket:
    capacity: float
    rate: float  # tokens per second
    tokens: float = attrs.field(default=None)
    updated: float = 0.0

    def __attrs_post_init__(self) -> None:
        if self.capacity <= 0 or self.rate <= 0:
            raise ValueError("capacity and rate must be positive")
        if self.tokens is None:
            self.tokens = float(self.capacity)

    @classmethod
    def per_hour(cls, requests: int, now: float) -> TokenBucket:
        """`requests` per hour, all of which may come at once."""
        return cls(capacity=requests, rate=requests / 3600.0, updated=now)

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def try_take(self, now: float, cost: float = 1.0) -> Verdict:
        self._refill(now)
        allowed = self.tokens >= cost
        if allowed:
            self.tokens -= cost
        retry_after = 0.0 if allowed else (cost - self.tokens) / self.rate
        reset_after = (self.capacity - self.tokens) / self.rate
        return Verdict(allowed, math.floor(self.tokens), retry_after, reset_after)

    def peek(self, now: float) -> Verdict:
        self._refill(now)
        return Verdict(self.tokens >= 1, math.floor(self.tokens), 0.0,
                       (self.capacity - self.tokens) / self.rate)
