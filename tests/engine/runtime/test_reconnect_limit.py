"""The reconnect limit end to end: a worker agent turned away with `retry_after`
waits at least that long before it tries again, then joins."""
from __future__ import annotations

import attrs

from tests.engine.runtime.harness import FAST, open_net


async def test_a_refused_agent_waits_retry_after_then_joins(autojump_clock):
    config = attrs.evolve(FAST, reconnect_burst=1.0, reconnect_rate=0.05)  # one per 20 s
    async with open_net(config) as net:
        first = net.start_worker("first", token="shared")
        await net.until_nodes(1)
        second = net.start_worker("second", token="shared", backoff_initial=0.1,
                                  backoff_max=0.2)
        await net.until_nodes(2)
        refused_at, joined_at = second.attempts[0], second.attempts[-1]
        assert len(second.attempts) == 2  # refused once, then waited it out
        assert joined_at - refused_at >= 19.0  # not the 0.1 s backoff
        assert first.error is None and second.error is None
