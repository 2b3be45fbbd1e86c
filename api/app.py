# The app factory and the lifespan that runs the services the routes share (their
# record, `Services`, and the configuration are in services.py, so that routes.py
# needs nothing of this module: app -> routes, never back).
#
# Theory of operation: `create_app(config)` builds a QuartTrio app whose lifespan
# runs `serve_services` (or a role's services: `create_app(config, serve)`,
# roles.py and cluster_services.py) in the app's nursery: it opens the store, opens the
# coordinator (engine.runtime) with a token verifier and an update callback, hands
# every task the store still has open to the dispatcher (relay.py), which puts
# them back on the coordinator with their own ids (running ones were re-queued by
# the store), then starts the dispatcher and a housekeeping actor and waits.
# Routes (routes.py) translate HTTP into store and coordinator calls and read
# snapshots; they hold no scheduling logic.
#
# Rules:
# - The coordinator's updates go through relay.UpdateWriter (store + SSE feed), the
#   single writer of task transitions and in-flight counts.
# - Shutdown is graceful: after_serving asks `serve_services` to stop, which closes
#   the coordinator, then lets the store's writer commit what is queued.
# - Wall-clock time comes from `config.clock` (unix seconds), so tests can move it.
from __future__ import annotations

import functools
import importlib.metadata
import logging
from typing import Awaitable, Protocol

import attrs

import trio
from quart_trio import QuartTrio

from engine.core import NetworkSnapshot
from engine.runtime import NodeIdentity, open_coordinator

from .access import RateLimiter
from .network_watch import WATCH_KEY, NetworkWatch
from .nodes_ws import EndingWebsocketConnection
from .openai_compat import openai_routes
from .relay import Dispatcher, LocalIntake, TaskFeed, UpdateWriter
from .routes import api_routes
from .server import ClosingHTTPConnection
from .services import FAILURE_KEY, ApiConfig, ServiceFailure, Services, process_memory
from .shutdown import install_closing
from .store import StoreUnavailable, open_store
from .cors import install_cors
from .dashboard import dashboard_routes, watch_network
from .logs import install_request_log, log_task_end
from .metrics import ApiMetrics, install_metrics
from .transitions import ServiceHooks, TransitionTracker
from .validation import MAX_TASK_BODY_BYTES

HOUSEKEEPING_SECONDS = 60.0  # how often the service records that it is alive
SHUTDOWN_GRACE_SECONDS = 10.0
NO_HOOKS = ServiceHooks()
log = logging.getLogger("neurogrid.api")


def package_version() -> str:
    try:
        return importlib.metadata.version("neurogrid")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def node_identity(token_name: str) -> NodeIdentity:
    """A worker token's node: its id is stable across reconnects (`node_<name>`)."""
    return NodeIdentity(node_id=f"node_{token_name}", name=token_name)


async def serve_services(config: ApiConfig, stop: trio.Event, *,
                         hooks: ServiceHooks = NO_HOOKS,
                         task_status: trio.TaskStatus[Services] = trio.TASK_STATUS_IGNORED
                         ) -> None:
    async with open_store(config.db) as store:
        store.observe_commits(hooks.on_commit)
        async def verify_token(token: str) -> NodeIdentity | None:
            name = await store.find_node_token(token)
            return node_identity(name) if name is not None else None

        limiter, feed = RateLimiter(), TaskFeed()
        writer = UpdateWriter(store, limiter, feed, config.clock, hooks.task_watchers)
        # The store row of a new task says queued already: no update for that.
        coordinator_config = attrs.evolve(config.coordinator, publish_accepted=False)
        async with open_coordinator(coordinator_config, verify_token=verify_token,
                                    on_update=writer) as coordinator:
            dispatcher = Dispatcher(coordinator, store, limiter, config.clock, writer,
                                    hooks.on_dispatch)
            services = Services(config, store, coordinator, limiter, feed, dispatcher,
                                config.clock(), package_version(),
                                intake=LocalIntake(limiter, dispatcher))
            for row in await store.reopen_tasks():  # accepted before a restart: again
                dispatcher.hand_over(row)
            services.run_id = await store.start_run(services.now())
            async with trio.open_nursery() as nursery:
                await nursery.start(dispatcher.serve)
                nursery.start_soon(housekeeping, services)
                for actor in hooks.actors:
                    nursery.start_soon(actor, services)
                task_status.started(services)
                await stop.wait()
                nursery.cancel_scope.cancel()
            await sign_of_life(services)


async def sign_of_life(services: Services) -> None:
    """Record that the service is alive now; skipped while the store cannot take
    writes (a full disk, the database server down): the service goes on, and the
    next sign of life records it."""
    try:
        await services.store.mark_alive(services.run_id, services.now())
    except StoreUnavailable as exc:
        log.warning("cannot record that the service is alive: %s", exc)


async def housekeeping(services: Services) -> None:
    while True:
        await trio.sleep(HOUSEKEEPING_SECONDS)
        await sign_of_life(services)
        services.limiter.prune(services.now())


def failure_text(exc: BaseException) -> str:
    """One line for an exception, the first leaf of a group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return str(exc) or type(exc).__name__


def install_observers(app: QuartTrio) -> ServiceHooks:
    """Metrics (`/metrics`), the dashboard (`/`) and its network watch, the request
    and task logs: the hooks that feed them from the services."""
    def snapshot() -> NetworkSnapshot | None:
        services: Services | None = app.extensions.get("neurogrid")
        return services.coordinator.snapshot() if services is not None else None

    metrics = ApiMetrics(snapshot)
    install_metrics(app, metrics)
    watch = app.extensions[WATCH_KEY] = NetworkWatch()
    app.register_blueprint(dashboard_routes)
    install_request_log(app)
    tracker = TransitionTracker([metrics.transition, watch.activity, log_task_end])
    return ServiceHooks(task_watchers=(tracker,), on_dispatch=metrics.dispatched,
                        on_commit=metrics.store_committed,
                        actors=(functools.partial(watch_network, watch=watch),))


class ServeServices(Protocol):
    """A role's services (serve_services, or roles.py's): run until `stop`, hand
    the running `Services` to `task_status`."""

    def __call__(self, config: ApiConfig, stop: trio.Event, *, hooks: ServiceHooks = NO_HOOKS,
                 task_status: trio.TaskStatus[Services] = trio.TASK_STATUS_IGNORED
                 ) -> Awaitable[None]: ...


def create_app(config: ApiConfig = ApiConfig(),
               serve: ServeServices | None = None) -> QuartTrio:
    """The app; its lifespan runs `serve` (by default `serve_services`: the whole
    service in this process)."""
    serve_role = serve_services if serve is None else serve
    app = QuartTrio("neurogrid")
    app.asgi_http_class = ClosingHTTPConnection
    app.asgi_websocket_class = EndingWebsocketConnection
    app.config["BODY_TIMEOUT"] = config.body_timeout
    # The largest body any route takes (a task with an audio file); each route
    # holds its body to its own limit (most: MAX_BODY_BYTES).
    app.config["MAX_CONTENT_LENGTH"] = MAX_TASK_BODY_BYTES
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = SHUTDOWN_GRACE_SECONDS
    app.config["JSON_SORT_KEYS"] = False
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.register_blueprint(api_routes)
    hooks = install_observers(app)
    install_cors(app, config.cors_origins)
    install_closing(app)
    app.register_blueprint(openai_routes)  # /v1: the OpenAI-compatible API
    stop = trio.Event()
    stopped = trio.Event()
    failure = app.extensions[FAILURE_KEY] = ServiceFailure()

    async def run(task_status: trio.TaskStatus[Services] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        try:
            async with trio.open_nursery() as nursery:
                services = await nursery.start(functools.partial(serve_role, config, stop,
                                                                   hooks=hooks))
                started = True
                task_status.started(services)
        except Exception as exc:  # a failure at start-up fails the start
            if not started:
                raise
            log.critical("the services stopped: %s", exc, exc_info=exc)
            failure.fail(failure_text(exc))
        finally:
            stopped.set()

    @app.before_serving
    async def start_services() -> None:
        app.extensions["neurogrid"] = await app.nursery.start(run)

    @app.after_serving
    async def stop_services() -> None:
        stop.set()
        await stopped.wait()

    return app


__all__ = ["ApiConfig", "HOUSEKEEPING_SECONDS", "NO_HOOKS", "ServeServices", "Services", "create_app",
           "housekeeping", "node_identity", "sign_of_life",
           "package_version", "process_memory", "serve_services"]
