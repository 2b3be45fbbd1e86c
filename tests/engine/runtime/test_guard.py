"""The per-token reconnect limit: a burst, then a steady rate; bounded memory."""
from __future__ import annotations

import pytest

from engine.runtime import ReconnectLimiter


def test_a_burst_then_the_rate():
    limiter = ReconnectLimiter(burst=3, rate=0.5)
    assert [limiter.admit("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert 2.0 <= limiter.admit("a", 0.0) <= 2.1  # one more in 1 / 0.5 s, rounded up
    assert limiter.admit("a", 0.05) == pytest.approx(2.0)  # 1.95, rounded up
    assert limiter.admit("b", 0.0) == 0.0  # per token
    assert limiter.admit("a", 2.0) == 0.0
    assert limiter.admit("a", 2.0) > 0.0


def test_random_tokens_do_not_grow_it_without_bound():
    limiter = ReconnectLimiter(burst=2, rate=1.0, max_tokens=100)
    for i in range(1000):
        limiter.admit(f"random-{i}", float(i))
    assert len(limiter) <= 101
