# Prometheus metrics (`GET /metrics`, the text exposition format), with the
# standard client library (prometheus_client).
#
# Theory of operation: each app has its own `ApiMetrics` and so its own
# CollectorRegistry (never the process-global one: tests build many apps in one
# process). Event metrics are fed as things happen:
#   - task transitions, from the update writer's TransitionTracker (transitions.py):
#     a counter by model, priority and the state entered, the queue wait (when a
#     task starts running) and the turnaround (when it ends) as histograms;
#   - placement: the seconds of each dispatcher trip to the coordinator (the
#     scheduler places the batch in that trip);
#   - HTTP requests: a request hook (request_hooks.py), labelled by the URL rule (the
#     route's pattern, never the raw path, so task ids do not explode the label set)
#     and status;
#   - store commits: the SQLite writer's group commits.
# State metrics - queue depth per model, nodes online by GPU class, slots - are read
# from the coordinator's snapshot at scrape time by a custom collector, so they
# can never drift from the scheduler.
#
# Rules:
# - Metric names start with `neurogrid_`; durations are in seconds (Prometheus
#   base units); counters end in `_total` in the exposition.
# - Feeding a metric never blocks and never raises into the caller's path.
# - A labelled metric is fed through its `Children` (each label set's child looked
#   up once: prometheus_client's `labels()` checks the values and takes a lock on
#   every call, a few microseconds of every request and task transition).
from __future__ import annotations

from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from quart import Blueprint, Quart, Request, Response, current_app

from engine.core import NetworkSnapshot

from .network_watch import connected_status
from .request_hooks import request_hooks
from .transitions import TaskTransition

METRICS_KEY = "neurogrid.metrics"  # app.extensions key
# Task turnaround and queue wait: from a few milliseconds (a tiny prompt on an idle
# network) to many minutes (an image under load).
TASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1, 2.5)


class SnapshotCollector:
    """Gauges read from the coordinator's snapshot when Prometheus scrapes."""

    def __init__(self, snapshot: Callable[[], NetworkSnapshot | None]) -> None:
        self.snapshot = snapshot

    def describe(self) -> list[Metric]:
        return []  # the families are known only from a snapshot; no checks at register

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot()
        if snapshot is None:  # services not started (or stopped)
            return
        queued = GaugeMetricFamily("neurogrid_queue_depth", "Tasks queued, by model",
                                   labels=["model"])
        for model, depth in sorted(snapshot.queued_by_model.items()):
            queued.add_metric([model], depth)
        yield queued
        online: dict[str, int] = {}
        slots: dict[str, list[int]] = {}
        for node in snapshot.nodes:
            taking_work = connected_status(node) == "online"  # not draining, not quarantined
            online[node.gpu] = online.get(node.gpu, 0) + (1 if taking_work else 0)
            total = slots.setdefault(node.gpu, [0, 0])
            total[0] += node.slots
            total[1] += node.running
        nodes = GaugeMetricFamily("neurogrid_nodes_online",
                                  "Nodes connected and taking work, by GPU class", labels=["gpu"])
        slot_family = GaugeMetricFamily("neurogrid_slots", "Task slots of connected nodes",
                                        labels=["gpu", "state"])
        for gpu in sorted(online):
            nodes.add_metric([gpu], online[gpu])
            slot_family.add_metric([gpu, "total"], slots[gpu][0])
            slot_family.add_metric([gpu, "busy"], slots[gpu][1])
        yield nodes
        yield slot_family
        yield GaugeMetricFamily("neurogrid_tasks_running", "Tasks running on nodes",
                                value=snapshot.running)
        yield GaugeMetricFamily("neurogrid_utilization", "Busy slots / all slots (0..1)",
                                value=snapshot.utilization)


class Children:
    """A labelled metric's children by their label values, each asked of the
    metric once. As many as the metric holds itself (the same label sets)."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


class ApiMetrics:
    def __init__(self, snapshot: Callable[[], NetworkSnapshot | None] = lambda: None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.tasks = Counter("neurogrid_tasks", "Task transitions, by the state entered",
                             ["model", "priority", "state"], registry=r)
        self.turnaround = Histogram("neurogrid_task_duration_seconds",
                                    "Task turnaround (created to ended), by final state",
                                    ["model", "state"], buckets=TASK_BUCKETS, registry=r)
        self.queue_wait = Histogram("neurogrid_task_queue_wait_seconds",
                                    "Seconds a task waited in the queue before it ran",
                                    ["model"], buckets=TASK_BUCKETS, registry=r)
        self.placement = Histogram("neurogrid_placement_seconds",
                                   "Seconds of a dispatcher trip to the scheduler (placing a "
                                   "batch of submissions)", buckets=FAST_BUCKETS, registry=r)
        self.placed = Counter("neurogrid_dispatched_tasks", "Tasks handed to the scheduler",
                              registry=r)
        self.http = Histogram("neurogrid_http_request_duration_seconds",
                              "HTTP request durations (to the response's headers), by route",
                              ["method", "route", "status"], buckets=FAST_BUCKETS, registry=r)
        self.commit = Histogram("neurogrid_store_commit_seconds",
                                "Seconds of one store group commit", buckets=FAST_BUCKETS,
                                registry=r)
        self.committed = Counter("neurogrid_store_operations", "Store operations committed",
                                 registry=r)
        r.register(SnapshotCollector(snapshot))
        self._tasks, self._turnaround = Children(self.tasks), Children(self.turnaround)
        self._queue_wait, self._http = Children(self.queue_wait), Children(self.http)

    def transition(self, t: TaskTransition) -> None:
        self._tasks(t.model, t.priority, t.status).inc()
        if t.queue_seconds is not None:
            self._queue_wait(t.model).observe(t.queue_seconds)
        if t.turnaround_seconds is not None:
            self._turnaround(t.model, t.status).observe(t.turnaround_seconds)

    def dispatched(self, tasks: int, seconds: float) -> None:
        self.placement.observe(seconds)
        self.placed.inc(tasks)

    def store_committed(self, operations: int, seconds: float) -> None:
        self.commit.observe(seconds)
        self.committed.inc(operations)

    def request_done(self, method: str, route: str, status: int, seconds: float) -> None:
        self._http(method, route, str(status)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


metrics_routes = Blueprint("neurogrid_metrics", __name__)


@metrics_routes.get("/metrics")
async def metrics_endpoint() -> Response:
    metrics: ApiMetrics = current_app.extensions[METRICS_KEY]
    return Response(metrics.render(), status=200, content_type=CONTENT_TYPE_LATEST)


def install_metrics(app: Quart, metrics: ApiMetrics) -> None:
    """Serve `/metrics` and time every request of `app`."""
    app.extensions[METRICS_KEY] = metrics
    app.register_blueprint(metrics_routes)

    def observe_request(req: Request, response: Response, seconds: float) -> None:
        rule = req.url_rule
        metrics.request_done(req.method, rule.rule if rule is not None else "unmatched",
                             response.status_code, seconds)

    request_hooks(app).finish.append(observe_request)


__all__ = ["ApiMetrics", "Children", "METRICS_KEY", "SnapshotCollector", "install_metrics", "metrics_routes"]
