# Who is calling, and may they: API keys, tiers and rate limits.
#
# Rules:
# - A caller is identified by `Authorization: Bearer <key>`; without one (and with
#   `--auth open`) by its client address, as an anonymous caller of the beta tier.
#   A malformed header, or a key that is unknown or revoked, is refused (401) even
#   in open mode: a client that sends a key wants it used.
# - Tiers (from the API reference): beta 100 submissions/hour with at most 10 tasks
#   in flight (queued or running), premium 1000/hour with 50 in flight. A key may
#   carry its own limits (an operator's arrangement with a client).
# - The hourly budget is spent by task submissions only (POST /api/tasks): reading,
#   listing and cancelling tasks are free, so polling a task never uses up the
#   budget. Every task call still reports the budget in X-RateLimit-* headers.
# - The budget is a token bucket (engine.core.TokenBucket): the full hour's
#   requests may come at once, then they refill evenly. A refused submission
#   (in-flight limit or empty bucket) spends nothing.
#
# - Behind a reverse proxy every client arrives from the proxy's address. With
#   `--trusted-proxy ADDR` (an address or a network, repeatable), a request whose
#   direct peer is a listed proxy is taken to come from the rightmost address in
#   its X-Forwarded-For that is not itself a listed proxy (the leftmost entries
#   are whatever the client wrote, so only what trusted proxies appended counts).
#   From any other peer the header is ignored: a client cannot choose who it is.
#
# Limits live in this process's memory: buckets start full after a restart, and the
# in-flight counts are rebuilt from the tasks the store still has open. Several API
# processes (`--role api`, PostgreSQL) share them instead: the bucket is a row and
# the in-flight count the owner's open task rows, judged by this same RateLimiter
# in the submission's transaction (postgres_cluster.py).
from __future__ import annotations

import ipaddress
import math
from typing import Iterable, Mapping, Sequence

import attrs

from engine.core import TokenBucket

from .store import KeyRecord, Store


@attrs.frozen
class Tier:
    name: str
    per_hour: int
    in_flight: int


DEFAULT_TIERS: dict[str, Tier] = {
    "beta": Tier("beta", 100, 10),
    "premium": Tier("premium", 1000, 50),
}
ANONYMOUS_TIER = "beta"


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(addresses: Iterable[str]) -> tuple[Network, ...]:
    """Trusted proxies: addresses or networks (10.0.0.0/8); ValueError names a bad one."""
    networks = []
    for address in addresses:
        try:
            networks.append(ipaddress.ip_network(address.strip(), strict=False))
        except ValueError:
            raise ValueError(f"--trusted-proxy {address!r} is not an IP address or "
                             "network") from None
    return tuple(networks)


def _trusted(address: str, proxies: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def client_address(peer: str, forwarded_for: Sequence[str], proxies: Sequence[Network]) -> str:
    """Who sent a request: `peer`, or (when `peer` is a trusted proxy) the rightmost
    X-Forwarded-For address that is not one (see the rules above)."""
    if not proxies or not forwarded_for or not _trusted(peer, proxies):
        return peer
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
    for hop in reversed(hops):
        if not _trusted(hop, proxies):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:  # not an address: the proxy's header is unusable
                return peer
    return hops[0] if hops and hops[0] else peer  # every hop a proxy: the first


class AuthError(Exception):
    """401: the message says what is wrong with the credentials."""


@attrs.frozen
class Caller:
    owner: str  # what tasks are stored under: "key:<key id>" or "anon:<address>"
    tier: str
    per_hour: int
    in_flight: int
    key_id: str | None = None

    @property
    def anonymous(self) -> bool:
        return self.key_id is None


async def identify(authorization: str | None, client_address: str, store: Store,
             auth_required: bool, tiers: Mapping[str, Tier]) -> Caller:
    """The caller behind a request's Authorization header, or AuthError."""
    if not authorization:
        if auth_required:
            raise AuthError("an API key is required: send 'Authorization: Bearer <key>'")
        tier = tiers[ANONYMOUS_TIER]
        return Caller(f"anon:{client_address}", tier.name, tier.per_hour, tier.in_flight)
    scheme, _, secret = authorization.strip().partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise AuthError("the Authorization header must be 'Bearer <key>'")
    record = await store.find_key(secret)
    if record is None:
        raise AuthError("unknown or revoked API key")
    return caller_for_key(record, tiers)


def caller_for_key(record: KeyRecord, tiers: Mapping[str, Tier]) -> Caller:
    tier = tiers.get(record.tier, tiers[ANONYMOUS_TIER])
    return Caller(
        f"key:{record.id}", tier.name,
        record.per_hour if record.per_hour is not None else tier.per_hour,
        record.in_flight if record.in_flight is not None else tier.in_flight,
        record.id,
    )


@attrs.frozen
class Admission:
    allowed: bool
    limit: int  # X-RateLimit-Limit: submissions per hour
    remaining: int  # X-RateLimit-Remaining
    reset_at: float  # X-RateLimit-Reset: unix time at which the bucket is full again
    retry_after: float = 0.0  # Retry-After, seconds, when refused
    reason: str = ""

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_at)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return headers


# A caller at its in-flight limit is told to come back after this long: tasks in
# flight end at an unknown time, and a second is what a short task takes.
IN_FLIGHT_RETRY_SECONDS = 1.0


@attrs.define
class RateLimiter:
    """Token buckets per caller and the tasks each caller has in flight. `now` is
    wall-clock unix time, passed in."""

    buckets: dict[str, TokenBucket] = attrs.field(factory=dict)
    open_tasks: dict[str, str] = attrs.field(factory=dict)  # task id -> owner
    in_flight: dict[str, int] = attrs.field(factory=dict)  # owner -> open tasks

    def _bucket(self, caller: Caller, now: float) -> TokenBucket:
        bucket = self.buckets.get(caller.owner)
        if bucket is None or bucket.capacity != caller.per_hour:
            bucket = self.buckets[caller.owner] = TokenBucket.per_hour(caller.per_hour, now)
        return bucket

    def admit(self, caller: Caller, now: float) -> Admission:
        """May `caller` submit a task now? Spends one submission when it may."""
        bucket = self._bucket(caller, now)
        if self.in_flight.get(caller.owner, 0) >= caller.in_flight:
            verdict = bucket.peek(now)
            return Admission(False, caller.per_hour, verdict.remaining, now + verdict.reset_after,
                             IN_FLIGHT_RETRY_SECONDS,
                             f"{caller.in_flight} tasks in flight is the limit of the "
                             f"{caller.tier} tier; wait for one to finish")
        verdict = bucket.try_take(now)
        reason = "" if verdict.allowed else (
            f"{caller.per_hour} task submissions per hour is the limit of the {caller.tier} tier")
        return Admission(verdict.allowed, caller.per_hour, verdict.remaining,
                         now + verdict.reset_after, verdict.retry_after, reason)

    def peek(self, caller: Caller, now: float) -> Admission:
        verdict = self._bucket(caller, now).peek(now)
        return Admission(True, caller.per_hour, verdict.remaining, now + verdict.reset_after)

    def task_opened(self, task_id: str, owner: str) -> None:
        if task_id not in self.open_tasks:
            self.open_tasks[task_id] = owner
            self.in_flight[owner] = self.in_flight.get(owner, 0) + 1

    def is_open(self, task_id: str) -> bool:
        """True while the task counts in flight."""
        return task_id in self.open_tasks

    def task_closed(self, task_id: str) -> None:
        owner = self.open_tasks.pop(task_id, None)
        if owner is None:
            return
        left = self.in_flight[owner] - 1
        if left:
            self.in_flight[owner] = left
        else:
            del self.in_flight[owner]

    def prune(self, now: float) -> None:
        """Forget buckets that have refilled: a full bucket is the same as none."""
        for owner in [o for o, b in self.buckets.items() if b.peek(now).reset_after <= 0]:
            del self.buckets[owner]


__all__ = ["Admission", "AuthError", "Caller", "DEFAULT_TIERS", "Network", "RateLimiter",
           "Tier", "caller_for_key", "client_address", "identify", "parse_networks"]
