# Guards of the coordinator's door: how often one worker token may connect.
#
#     limiter = ReconnectLimiter(burst=10, rate=0.5)
#     wait = limiter.admit(token, now)      # 0.0: go ahead; else seconds to wait
#
# Theory. Every hello costs the coordinator a token check (a store query) and, for
# a node it already knows, re-queues what that node held. A worker that reconnects
# in a tight loop (a crash loop, or a hostile peer) must not turn that into load or
# into lost work, so connections are rate-limited per token with a token bucket
# (engine.core.TokenBucket): `burst` hellos at once, then `rate` a second. A hello
# beyond it is refused before the token is checked, with `error` retry=true and the
# wait (`retry_after`); the worker agent backs off at least that long.
#
# Rules: time is an argument (the coordinator passes trio's clock); memory stays
# bounded: beyond `max_tokens` buckets, the ones that have refilled (say nothing
# a fresh bucket would not) are forgotten, so random tokens cannot grow it.
from __future__ import annotations

import math

import attrs

from engine.core import TokenBucket


@attrs.define
class ReconnectLimiter:
    burst: float = 10.0  # hellos one token may send at once
    rate: float = 0.5  # hellos a second, sustained
    max_tokens: int = 10_000  # buckets kept before the full ones are pruned
    _buckets: dict[str, TokenBucket] = attrs.field(factory=dict, alias="buckets")

    def __len__(self) -> int:
        """How many tokens it keeps a bucket for."""
        return len(self._buckets)

    def admit(self, token: str, now: float) -> float:
        """0.0 when a hello with `token` may go on now; else the seconds to wait."""
        bucket = self._buckets.get(token)
        if bucket is None:
            if len(self._buckets) >= self.max_tokens:
                self._prune(now)
            bucket = self._buckets[token] = TokenBucket(self.burst, self.rate, updated=now)
        verdict = bucket.try_take(now)
        # rounded up to a tenth of a second: a worker that waits exactly this long
        # finds its token there (no float shortfall turning it away again)
        return 0.0 if verdict.allowed else math.ceil(verdict.retry_after * 10 + 1e-9) / 10

    def _prune(self, now: float) -> None:
        for token in [t for t, b in self._buckets.items()
                      if b.peek(now).remaining >= self.burst]:
            del self._buckets[token]


__all__ = ["ReconnectLimiter"]
