# The app factory and the lifespan that runs the services the routes share (their
# record, `Services`, and the configuration are in services.py, so that routes.py
# needs nothing of this module: app -> routes, never back).
#
# Theory of operation: `create_app(config)` builds a QuartTrio app whose lifespan
# runs `serve_services` in the app's nursery: it opens the store, opens the
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

import importlib.metadata

import attrs

import trio
from quart_trio import QuartTrio

from engine.runtime import NodeIdentity, open_coordinator

from .access import RateLimiter
from .nodes_ws import EndingWebsocketConnection
from .openai_compat import openai_routes
from .relay import Dispatcher, TaskFeed, UpdateWriter
from .routes import api_routes
from .services import ApiConfig, Services, process_memory
from .store import open_store
from .validation import MAX_BODY_BYTES

HOUSEKEEPING_SECONDS = 60.0  # how often the service records that it is alive
SHUTDOWN_GRACE_SECONDS = 10.0


def package_version() -> str:
    try:
        return importlib.metadata.version("neurogrid")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def node_identity(token_name: str) -> NodeIdentity:
    """A worker token's node: its id is stable across reconnects (`node_<name>`)."""
    return NodeIdentity(node_id=f"node_{token_name}", name=token_name)


async def serve_services(config: ApiConfig, stop: trio.Event, *,
                         task_status: trio.TaskStatus[Services] = trio.TASK_STATUS_IGNORED
                         ) -> None:
    async with open_store(config.db) as store:
        async def verify_token(token: str) -> NodeIdentity | None:
            name = await store.find_node_token(token)
            return node_identity(name) if name is not None else None

        limiter, feed = RateLimiter(), TaskFeed()
        writer = UpdateWriter(store, limiter, feed, config.clock)
        # The store row of a new task says queued already: no update for that.
        coordinator_config = attrs.evolve(config.coordinator, publish_accepted=False)
        async with open_coordinator(coordinator_config, verify_token=verify_token,
                                    on_update=writer) as coordinator:
            services = Services(config, store, coordinator, limiter, feed,
                                Dispatcher(coordinator, store, limiter, config.clock, writer),
                                config.clock(), package_version())
            for row in await store.reopen_tasks():  # accepted before a restart: again
                services.dispatcher.hand_over(row)
            services.run_id = await store.start_run(services.now())
            async with trio.open_nursery() as nursery:
                await nursery.start(services.dispatcher.serve)
                nursery.start_soon(housekeeping, services)
                task_status.started(services)
                await stop.wait()
                nursery.cancel_scope.cancel()
            await store.mark_alive(services.run_id, services.now())


async def housekeeping(services: Services) -> None:
    while True:
        await trio.sleep(HOUSEKEEPING_SECONDS)
        now = services.now()
        await services.store.mark_alive(services.run_id, now)
        services.limiter.prune(now)


def create_app(config: ApiConfig = ApiConfig()) -> QuartTrio:
    app = QuartTrio("neurogrid")
    app.asgi_websocket_class = EndingWebsocketConnection
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = SHUTDOWN_GRACE_SECONDS
    app.config["JSON_SORT_KEYS"] = False
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.register_blueprint(api_routes)
    app.register_blueprint(openai_routes)  # /v1: the OpenAI-compatible API
    stop = trio.Event()
    stopped = trio.Event()

    async def run(task_status: trio.TaskStatus[Services] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve_services(config, stop, task_status=task_status)
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


__all__ = ["ApiConfig", "Services", "create_app", "process_memory", "serve_services"]
