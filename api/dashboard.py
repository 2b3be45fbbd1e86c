# The dashboard and playground at `/`, its live feed, and the interactive API docs
# at `/docs`: pages and assets shipped in the package (api/static/), no CDN, no
# build step.
#
# Theory of operation: the page (static/dashboard.html + .js + .css) opens an
# EventSource on `GET /api/network/events`, which sends a `network` event at once
# and then every WATCH_SECONDS: the dashboard view - /api/network/status's network
# block and nodes (recently departed ones `offline`), grouped by region by the
# page; the queue per model and priority; the last hour per minute (throughput,
# latency percentiles); recent tasks; cost against the OpenAI reference. The
# playground uses the public task API (POST /api/tasks, the task's SSE stream).
# A watcher actor (`watch_network`) looks at the network every WATCH_SECONDS
# even with nobody watching, so joins and leaves are logged and remembered.
#
# Rules:
# - Assets are a registry (ASSETS: file name -> content type); anything else is 404,
#   so no path reaches the file system.
# - The view is computed per subscriber from the snapshot and the store's totals:
#   one `stats()` read a second per open dashboard.
from __future__ import annotations

import importlib.resources
import json
from typing import Any, AsyncIterator, Mapping

import trio
from quart import Blueprint, Response, current_app, jsonify

from .network_watch import WATCH_KEY, WATCH_SECONDS, NetworkWatch
from .services import Services
from .store import NodeRecord, Stats
from .shutdown import app_closing
from .views import iso, network_status, percent

dashboard_routes = Blueprint("neurogrid_dashboard", __name__)
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "docs.js": "text/javascript; charset=utf-8",
}
PAGES = {"/": "dashboard.html", "/docs": "docs.html"}
# Content-Security-Policy of the pages: everything from this origin only.
PAGE_POLICY = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
               "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'")


def asset_bytes(name: str) -> bytes:
    return (importlib.resources.files("api") / "static" / name).read_bytes()


def dashboard_view(services: Services, watch: NetworkWatch, stats: Stats,
                   nodes: Mapping[str, NodeRecord], availability: float, now: float
                   ) -> dict[str, Any]:
    """The data of one `network` event (see the module comment)."""
    snapshot = services.coordinator.snapshot()
    offline = watch.look(snapshot, now)
    status = network_status(snapshot, stats, nodes, availability, now, offline)
    activity = watch.activity
    minutes = activity.minutes(now)
    saved = max(0.0, stats.openai_cost - stats.cost)
    return {
        "timestamp": status["timestamp"],
        "network": status["network"],
        "nodes": status["nodes"],
        "queue": activity.queue(),
        "queued_by_model": dict(snapshot.queued_by_model),
        "minutes": minutes,
        "hour": activity.hour_totals(),
        "recent": [{
            "id": t.task_id, "model": t.model, "priority": t.priority, "status": t.status,
            "ended_at": iso(t.at), "node": t.node_id, "location": t.node_location,
            "gpu": t.node_gpu, "seconds": round(t.seconds, 3), "cost": t.cost,
            "openai_cost": t.openai_cost,
        } for t in activity.recent()],
        "cost": {
            "total_usd": stats.cost, "openai_usd": stats.openai_cost, "saved_usd": saved,
            "savings": percent(100.0 * saved / stats.openai_cost if stats.openai_cost else 0.0),
        },
    }


async def read_view(services: Services, watch: NetworkWatch) -> dict[str, Any]:
    now = services.now()
    return dashboard_view(services, watch, await services.store.stats(),
                          await services.store.nodes(),
                          await services.store.availability(now, services.run_id), now)


async def current_view() -> dict[str, Any]:
    return await read_view(current_app.extensions["neurogrid"], current_app.extensions[WATCH_KEY])


def page(name: str) -> Response:
    return Response(asset_bytes(name), status=200, content_type="text/html; charset=utf-8",
                    headers={"Content-Security-Policy": PAGE_POLICY,
                             "X-Content-Type-Options": "nosniff"})


@dashboard_routes.get("/")
async def dashboard_page() -> Response:
    return page(PAGES["/"])


@dashboard_routes.get("/docs")
async def docs_page() -> Response:
    return page(PAGES["/docs"])


@dashboard_routes.get("/assets/<name>")
async def asset(name: str) -> Any:
    content_type = ASSETS.get(name)
    if content_type is None:
        return jsonify({"success": False, "error": "Not found",
                        "details": f"no asset {name[:100]!r}"}), 404
    return Response(asset_bytes(name), status=200, content_type=content_type,
                    headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


@dashboard_routes.get("/api/network/dashboard")
async def dashboard_data() -> Any:
    return jsonify(await current_view())


@dashboard_routes.get("/api/network/events")
async def network_events() -> Response:
    services: Services = current_app.extensions["neurogrid"]
    watch: NetworkWatch = current_app.extensions[WATCH_KEY]
    closing = app_closing(current_app)

    async def events() -> AsyncIterator[bytes]:
        while not closing.stopping.is_set():
            view = await read_view(services, watch)
            yield f"event: network\ndata: {json.dumps(view)}\n\n".encode()
            if await closing.pause(WATCH_SECONDS):  # the server is shutting down
                return

    response = Response(events(), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache"})
    response.timeout = None
    return response


async def watch_network(services: Services, watch: NetworkWatch) -> None:
    """Look at the network every WATCH_SECONDS (joins and leaves are logged)."""
    while True:
        watch.look(services.coordinator.snapshot(), services.now())
        await trio.sleep(WATCH_SECONDS)


__all__ = ["ASSETS", "PAGES", "dashboard_routes", "dashboard_view", "watch_network"]
