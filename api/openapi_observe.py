# The OpenAPI descriptions of the observation endpoints (metrics, dashboard, live
# network events, interactive docs, CORS preflight), merged into openapi.PATHS:
# one document describes every route.
from __future__ import annotations

from typing import Any

OBSERVE_PATHS: dict[str, Any] = {
    "/metrics": {"get": {
        "summary": "Prometheus metrics (text exposition format 0.0.4)",
        "description": "Task transitions by model, priority and state; task turnaround and "
                       "queue-wait histograms; queue depth per model; nodes online by GPU "
                       "class; placement time; HTTP request durations by route and status; "
                       "store commit latency.",
        "responses": {"200": {"description": "metrics",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
    "/": {"get": {"summary": "The live dashboard and playground (HTML)",
                  "responses": {"200": {"description": "an HTML page",
                                        "content": {"text/html": {}}}}}},
    "/assets/{name}": {"get": {
        "summary": "The dashboard's and docs' scripts and styles (served locally, no CDN)",
        "parameters": [{"name": "name", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "responses": {"200": {"description": "the file"}, "404": {"description": "no such file"}}}},
    "/api/network/events": {"get": {
        "summary": "Server-sent events: a `network` event with the dashboard's view of the "
                   "network once a second (node list with online/draining/quarantined/"
                   "offline status and the count of each, queue depth per model and "
                   "priority, last hour's throughput and latency, recent tasks, cost "
                   "against OpenAI)",
        "responses": {"200": {"description": "an event stream",
                              "content": {"text/event-stream": {}}}}}},
    "/api/network/dashboard": {"get": {
        "summary": "The dashboard's view of the network, once (the data of one "
                   "`network` event)",
        "responses": {"200": {"description": "the view", "content": {"application/json": {}}}}}},
    "/docs": {"get": {"summary": "Interactive API documentation, rendered from /openapi.json",
                      "responses": {"200": {"description": "an HTML page",
                                            "content": {"text/html": {}}}}}},
}

__all__ = ["OBSERVE_PATHS"]
