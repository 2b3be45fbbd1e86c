# What the routes share: the API's configuration and the record of the running
# services (store, coordinator, limits, feed, dispatcher) that app.py's lifespan
# builds and routes.py reads from the app. Its own module so that neither of those
# two imports the other's back (app -> routes -> services).
from __future__ import annotations

import os
import resource
import time
from typing import Any, Callable, Iterable, Mapping

import attrs
import trio

from engine.runtime import Coordinator, CoordinatorConfig

from .access import DEFAULT_TIERS, Network, RateLimiter, Tier, parse_networks
from .relay import Dispatcher, TaskFeed
from .store import Store


def proxy_networks(addresses: Iterable[object]) -> tuple[Network, ...]:
    """ApiConfig.trusted_proxies from addresses, networks or their text."""
    return parse_networks(str(a) for a in addresses)


@attrs.frozen
class ApiConfig:
    db: str = "neurogrid.db"  # a store URL, or a SQLite file path (store.open_store)
    auth_required: bool = False
    tiers: Mapping[str, Tier] = attrs.field(factory=lambda: dict(DEFAULT_TIERS))
    environment: str = "development"
    coordinator: CoordinatorConfig = attrs.field(factory=CoordinatorConfig)
    clock: Callable[[], float] = time.time
    # reverse proxies whose X-Forwarded-For names the client (access.client_address)
    trusted_proxies: tuple[Network, ...] = attrs.field(default=(), converter=proxy_networks)


@attrs.define
class Services:
    config: ApiConfig
    store: Store
    coordinator: Coordinator
    limiter: RateLimiter
    feed: TaskFeed
    dispatcher: Dispatcher
    started_at: float  # wall clock
    version: str
    run_id: int = 0  # this run in the store's service history

    def now(self) -> float:
        return self.config.clock()



@attrs.define
class ServiceFailure:
    """Set when the services (store, coordinator) stopped by themselves after
    start-up: the process cannot serve any more and must exit non-zero, so that a
    supervisor restarts it (`neurogrid serve` waits on `failed`). Until it has,
    every request is answered 503."""

    failed: trio.Event = attrs.field(factory=trio.Event)
    reason: str | None = None

    def fail(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self.failed.set()


FAILURE_KEY = "neurogrid.failure"  # where the app keeps its ServiceFailure


def service_failure(app: Any) -> ServiceFailure:
    failure: ServiceFailure = app.extensions[FAILURE_KEY]
    return failure


def process_memory() -> tuple[int, int]:
    """(resident bytes of this process, memory of the machine), from /proc where
    there is one, else from `resource` (peak resident) and sysconf."""
    rss = total = 0
    try:
        with open("/proc/self/status") as status:
            rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
        with open("/proc/meminfo") as meminfo:
            total = next(int(line.split()[1]) * 1024 for line in meminfo
                         if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError):
        rss = rss or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        total = total or os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return rss, total


__all__ = ["ApiConfig", "FAILURE_KEY", "ServiceFailure", "Services", "process_memory",
           "service_failure"]
