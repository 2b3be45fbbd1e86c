# What the routes share: the API's configuration and the record of the running
# services (store, coordinator, limits, feed, dispatcher) that app.py's lifespan
# builds and routes.py reads from the app. Its own module so that neither of those
# two imports the other's back (app -> routes -> services).
from __future__ import annotations

import functools
import math
import os
import resource
import time
from typing import Any, Callable, Iterable, Mapping, Protocol

import attrs
import trio

from engine.core import NetworkSnapshot, Quote, TaskSpec
from engine.protocol import Connection
from engine.runtime import CoordinatorConfig

from .access import DEFAULT_TIERS, Network, RateLimiter, Tier, parse_networks
from .relay import Dispatcher, Intake, TaskFeed
from .server import BODY_TIMEOUT_SECONDS
from .store import Stats, Store, StoreUnavailable

ROLES = ("all", "api", "coordinator")  # `neurogrid serve --role` (roles.py)
# /health while the store is degraded: how long it waits for the store's totals
DEGRADED_READ_SECONDS = 1.0


class NetworkView(Protocol):
    """What the routes ask of the coordinator: engine.runtime.Coordinator in one
    process; in the api role (and a standby coordinator) the network as the
    leader publishes it, which turns workers away to the leader (roles.py)."""

    def snapshot(self) -> NetworkSnapshot: ...

    def node_weights(self) -> dict[str, dict[str, str]]: ...

    def quote(self, spec: TaskSpec) -> Quote: ...

    async def serve_connection(self, conn: Connection) -> None: ...


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
    cors_origins: tuple[str, ...] = ()  # other origins whose pages may call the API (cors.py)
    role: str = attrs.field(default="all")  # one of ROLES (roles.py)
    # the URL workers reach this process's worker endpoint at (the coordinator
    # role's leader records it, so that standbys and API processes can name it)
    advertise_url: str = ""
    # a request body must have arrived within this many seconds of the route asking
    # for it, else 408 (server.py: why every connection ends)
    body_timeout: float = attrs.field(default=BODY_TIMEOUT_SECONDS)

    @body_timeout.validator
    def _positive_timeout(self, attribute: Any, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and value > 0):
            raise ValueError(f"body_timeout: a finite number of seconds > 0, got {value!r}")

    @role.validator
    def _known_role(self, attribute: Any, value: str) -> None:
        if value not in ROLES:
            raise ValueError(f"role {value!r}: one of {', '.join(ROLES)}")


@attrs.define
class Services:
    config: ApiConfig
    store: Store
    coordinator: NetworkView
    limiter: RateLimiter
    feed: TaskFeed
    dispatcher: Dispatcher | None  # None where no scheduler runs here (roles.py)
    started_at: float  # wall clock
    version: str
    run_id: int = 0  # this run in the store's service history
    intake: Intake | None = None  # how a submission is admitted and stored
    worker_url: str = ""  # where workers reach this process (once the server listens)
    listening: trio.Event = attrs.field(factory=trio.Event)  # set with worker_url
    last_stats: Stats = attrs.field(factory=Stats)  # the totals `health_stats` read last

    def now(self) -> float:
        return self.config.clock()

    async def health_stats(self, degraded: bool) -> Stats:
        """The store's totals, for /health. While the store is degraded its database
        may be unreachable (PostgreSQL down: a read waits for the pool's timeout),
        so the read gets DEGRADED_READ_SECONDS and the totals read last stand in
        when it does not answer in time: /health answers its 503 at once."""
        if not degraded:
            self.last_stats = await self.store.stats()
            return self.last_stats
        with trio.move_on_after(DEGRADED_READ_SECONDS):
            try:
                self.last_stats = await self.store.stats()
            except StoreUnavailable:
                pass
        return self.last_stats

    def listening_at(self, worker_url: str) -> None:
        """The server listens: workers reach this process at `worker_url`."""
        self.worker_url = worker_url
        self.listening.set()



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
    """(resident bytes of this process, memory of the machine). The resident size
    is one short read of /proc/self/statm (every /health asks: reading
    /proc/self/status line by line cost ~80 us a request); the machine's memory
    is read once. Without /proc: `resource` (peak resident) and sysconf."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            rss = int(statm.read().split()[1]) * _PAGE_BYTES
    except (OSError, IndexError, ValueError):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return rss, machine_memory()


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


@functools.cache
def machine_memory() -> int:
    """Bytes of memory of the machine (/proc/meminfo's MemTotal, else sysconf)."""
    try:
        with open("/proc/meminfo") as meminfo:
            return next(int(line.split()[1]) * 1024 for line in meminfo
                        if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError):
        return os.sysconf("SC_PHYS_PAGES") * _PAGE_BYTES


__all__ = ["ApiConfig", "DEGRADED_READ_SECONDS", "FAILURE_KEY", "NetworkView", "ROLES",
           "ServiceFailure", "Services", "process_memory", "service_failure"]
