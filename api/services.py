# What the routes share: the API's configuration and the record of the running
# services (store, coordinator, limits, feed, dispatcher) that app.py's lifespan
# builds and routes.py reads from the app. Its own module so that neither of those
# two imports the other's back (app -> routes -> services).
from __future__ import annotations

import os
import resource
import time
from typing import Any, Callable, Mapping

import attrs

from engine.runtime import Coordinator, CoordinatorConfig

from .access import DEFAULT_TIERS, RateLimiter, Tier
from .relay import Dispatcher, TaskFeed
from .store import Store


@attrs.frozen
class ApiConfig:
    db: str = "neurogrid.db"  # a store URL, or a SQLite file path (store.open_store)
    auth_required: bool = False
    tiers: Mapping[str, Tier] = attrs.field(factory=lambda: dict(DEFAULT_TIERS))
    environment: str = "development"
    coordinator: CoordinatorConfig = attrs.field(factory=CoordinatorConfig)
    clock: Callable[[], float] = time.time
    cors_origins: tuple[str, ...] = ()  # other origins whose pages may call the API (cors.py)


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


__all__ = ["ApiConfig", "Services", "process_memory"]
