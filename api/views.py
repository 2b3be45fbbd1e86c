# The JSON shapes of the API reference (shared/seed/neurogrid-api-reference.txt),
# built from stored rows and coordinator snapshots.
#
# Rules:
# - The reference is a contract: every field it shows is here with the same name
#   and JSON type (money and durations that it writes as strings stay strings:
#   "$0.001", "3s", "98.3%"). Fields beyond it are additions, never replacements.
# - Values whose time has not come are null where the reference shows a string
#   (`result`, `completed_at`), 0 where it shows a number (`cost`, `tokens_used`,
#   `processing_time`), so a typed client never meets a changed type.
# - Pure functions of their arguments: time comes in as unix seconds.
from __future__ import annotations

import json
import math
import time
from typing import Any, Callable, Mapping, Sequence

from engine.core import MODELS, NetworkSnapshot, NodeSnapshot, gpu_rate

from .network_watch import NODE_STATUSES, GoneNode, connected_status
from .store import OPEN_STATES, NodeRecord, Stats, StoreHealth, TaskRow

SIGNUP_BONUSES = {
    "free_tasks": 1000,
    "lifetime_discount": 15,
    "priority_support": True,
    "early_access": True,
}
SIGNUP_NEXT_STEPS = [
    "You will receive beta access email within 24 hours",
    "Follow us on social media for updates",
    "Join our Discord community for early discussions",
]


def iso(unix: float | None) -> str | None:
    """ISO-8601 UTC to the second, as the reference writes it: 2024-10-25T15:30:00Z."""
    if unix is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


def dollars(amount: float) -> str:
    """"$0.001", "$0.060", "$934.67": cents above a dollar; below, three decimals, or
    as many more as it takes to show two significant digits of a tiny amount."""
    if amount >= 1 or amount == 0:
        return f"${amount:,.2f}" if amount >= 1 else "$0.000"
    decimals = 3
    while amount < 10 ** (1 - decimals) and decimals < 10:
        decimals += 1
    return f"${amount:.{decimals}f}"


def estimated_seconds_text(seconds: float) -> str:
    return f"{max(1, math.ceil(seconds))}s"


def percent(value: float) -> str:
    return f"{value:.1f}%"


def error_body(error: str, details: str, now: float) -> dict[str, Any]:
    return {"success": False, "error": error, "details": details, "timestamp": iso(now)}


def task_created(row: TaskRow, node_id: str | None, node_location: str | None, gpu: str,
                 savings_pct: float) -> dict[str, Any]:
    """The answer to POST /api/tasks."""
    return {
        "success": True,
        "task_id": row.id,
        "status": row.status,
        "estimated_time": estimated_seconds_text(row.estimated_seconds),
        "node": {"id": node_id, "location": node_location, "gpu": gpu},
        "cost": {
            "estimated": dollars(row.estimated_cost),
            "comparison": {"openai": dollars(row.openai_cost), "savings": percent(savings_pct)},
            "estimated_usd": row.estimated_cost,
        },
        "message": "Task queued for processing",
        # set when no online node serves the model: the task waits for one until its
        # deadline, then ends expired
        "warning": None if node_id is not None else (
            f"no online node serves {row.model} now: the task waits for one until its "
            "deadline, then ends expired"),
        "model": row.model,
        "priority": row.priority,
        "created_at": iso(row.created_at),
    }


def task_view(row: TaskRow, base_url: str | Callable[[], str] = "") -> dict[str, Any]:
    """One task, as GET /api/tasks/<id> shows it. A result that is a file the API
    serves (an image) is its URL: `base_url` (scheme and host of the request) + path;
    it may be a function, called only for such a result (working out a request's
    host URL is a measurable part of a small request)."""
    result = row.result
    if row.content_type is not None and result is not None and result.startswith("/"):
        base = base_url() if callable(base_url) else base_url
        result = base.rstrip("/") + result
    node = None
    if row.node_id is not None:
        node = {"id": row.node_id, "location": row.node_location or "", "gpu": row.node_gpu or ""}
    return {
        "id": row.id,
        "status": row.status,
        "result": result,
        "created_at": iso(row.created_at),
        "completed_at": iso(row.completed_at),
        "processing_time": round(row.processing_time, 3),
        "cost": row.cost,
        "tokens_used": row.tokens_used,
        "node": node,
        "model": row.model,
        "priority": row.priority,
        "started_at": iso(row.started_at),
        "estimated_cost": row.estimated_cost,
        "error": row.error,
        "params": row.params,
        # what `result` is: text, or the URL of a file of that type
        "content_type": row.content_type or "text/plain",
        # the weights that ran, as the node named them; a stand-in says so
        "model_weights": row.model_weights,
        "verify": row.verify,
        "verification": verification_view(row),
        # who counted the usage `cost` and `tokens_used` follow: "coordinator", or
        # "node, bounded" (no tokenizer here for the node's weights); null until done
        "metered_by": row.metered_by,
    }


def verification_view(row: TaskRow) -> dict[str, Any]:
    """How the task's result fared under verification (engine/core/verification.py):
    status pending | passed | failed | unverified | skipped, the producing node, the
    validator and its score and detail; `rerun` when a result failed verification and
    the task ran again (`failed_results` lists those)."""
    if row.verification is not None:
        return {"mode": row.verify, **json.loads(row.verification)}
    if row.verify == "none":
        status, detail = "skipped", "not requested"
    elif row.status in OPEN_STATES:
        status, detail = "pending", ""
    else:
        status, detail = "skipped", "no verification took place"
    return {"mode": row.verify, "status": status, "producer": None, "validator": None,
            "score": None, "detail": detail, "rerun": False, "failed_results": []}


def unit_offer(node: NodeSnapshot, model: str) -> tuple[float, str]:
    """(dollars per work unit of `model`, the GPU class) a node offers: at its
    measured speed and price for the model once measured, else its claimed GPU's."""
    measured = next((m for m in node.measured if m.model == model), None)
    if measured is not None:
        return measured.price_per_hour / 3600 / measured.quoted_rate, measured.gpu
    return node.price_per_hour / 3600 / gpu_rate(node.gpu, model), node.gpu


def node_view(node: NodeSnapshot, record: NodeRecord | None, status: str) -> dict[str, Any]:
    """One node of /api/network/status (and the dashboard)."""
    return {
        "id": node.node_id,
        "location": node.location or node.region,
        "status": status,
        "gpu": node.gpu,
        "tasks_processed": max(node.tasks_done, record.tasks_processed if record else 0),
        "name": node.name,
        "models": list(node.models),
        "slots": node.slots,
        "running": node.running if status != "offline" else 0,
        "price_per_hour": node.price_per_hour,
        "region": node.region,
        # engine/core/reputation.py: the Beta(1 + passed, 1 + failed) posterior mean
        "reputation": {"score": round(node.reputation, 4), "verified": node.verified,
                       "failed": node.failed_verifications, "validator": node.validator,
                       # operator-trusted (--trusted-node): a validator whose own
                       # results are not verified, never on probation
                       "trusted": node.trusted,
                       # on probation or scoring low: at most this many of its tasks
                       # running or held for a verdict (engine/core/verification.py)
                       "probation_limit": node.probation_limit},
        "quarantined": node.quarantined,
        # what its timed runs showed (engine/core/speed.py), per model it has run:
        # its rate, the GPU class that speed matches and its price for the model
        "measured_speed": {m.model: {"rate": round(m.rate, 3),
                                     "unit": f"{MODELS[m.model].work_unit}s per second",
                                     "gpu_class": m.gpu,
                                     "price_per_hour": round(m.price_per_hour, 6),
                                     "reclassed": m.reclassed}
                           for m in node.measured},
        # its measured speed contradicted the GPU it claims (`gpu`) for some model
        "gpu_claim_contradicted": node.reclassed,
    }


def status_counts(nodes: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many of the listed nodes (node_view's) are in each of NODE_STATUSES."""
    counts = dict.fromkeys(NODE_STATUSES, 0)
    for node in nodes:
        counts[node["status"]] += 1
    return counts


def network_status(snapshot: NetworkSnapshot, stats: Stats, known_nodes: Mapping[str, NodeRecord],
                   availability: float, now: float, offline: Sequence[GoneNode] = ()
                   ) -> dict[str, Any]:
    """`offline`: nodes that left recently (network_watch.NodeRoster), listed after
    the connected ones with status `offline` and when they were last seen.
    `nodes_online` counts every connected node (as the reference has it); the
    addition `nodes_by_status` splits them, so a quarantined node is not counted
    as one that takes work."""
    ended = stats.completed_tasks + stats.failed_tasks
    # an integer percentage, as the reference shows it (99)
    success_rate = round(100.0 * stats.completed_tasks / ended) if ended else 100
    avg_response = stats.turnaround_seconds / stats.completed_tasks if stats.completed_tasks else 0.0
    savings = (100.0 * (1 - stats.cost / stats.openai_cost)) if stats.openai_cost > 0 else 0.0
    nodes = [node_view(node, known_nodes.get(node.node_id), connected_status(node))
             for node in snapshot.nodes]
    for gone in offline:
        nodes.append(node_view(gone.node, known_nodes.get(gone.node.node_id), "offline")
                     | {"last_seen": iso(gone.left_at)})
    return {
        "success": True,
        "timestamp": iso(now),
        "network": {
            "nodes_online": len(snapshot.nodes),
            "total_tasks": stats.total_tasks,
            "completed_tasks": stats.completed_tasks,
            "queued_tasks": snapshot.queued,
            "success_rate": success_rate,
            "avg_response_time": f"{avg_response:.1f}s",
            "cost_savings_vs_openai": percent(savings),
            "uptime": percent(100.0 * availability),
            "running_tasks": snapshot.running,
            "failed_tasks": stats.failed_tasks,
            "cancelled_tasks": stats.cancelled_tasks,
            "utilization": round(snapshot.utilization, 3),
            "nodes_by_status": status_counts(nodes),
        },
        "nodes": nodes,
        "stats": {
            "beta_signups": stats.beta_signups,
            "total_compute_time": f"{stats.compute_seconds:.0f}s",
            "total_savings": dollars(max(0.0, stats.openai_cost - stats.cost)),
        },
    }


def uptime_human(seconds: float) -> str:
    """"24h 0m" as the reference writes a day."""
    minutes = int(seconds // 60)
    return f"{minutes // 60}h {minutes % 60}m"


def megabytes(n_bytes: int) -> str:
    return f"{round(n_bytes / 2**20)}MB"


HEALTHY_STORE = StoreHealth()


def health(version: str, environment: str, uptime: float, rss_bytes: int, total_bytes: int,
           snapshot: NetworkSnapshot, stats: Stats, now: float,
           store: StoreHealth = HEALTHY_STORE) -> dict[str, Any]:
    """/health: "status" is "OK", or "degraded" with the "reason" (the API answers
    it with 503 then); "store" counts the writes that failed."""
    return {
        "status": "degraded" if store.degraded else "OK",
        "reason": store.reason if store.degraded else None,
        "service": "NeuroGrid",
        "version": version,
        "environment": environment,
        "timestamp": iso(now),
        "uptime": int(uptime),
        "uptime_human": uptime_human(uptime),
        "memory": {"used": megabytes(rss_bytes), "total": megabytes(total_bytes),
                   "used_bytes": rss_bytes, "total_bytes": total_bytes},
        "network": {
            "nodes_online": len(snapshot.nodes),
            "total_tasks": stats.total_tasks,
            "beta_signups": stats.beta_signups,
            "queued_tasks": snapshot.queued,
            "running_tasks": snapshot.running,
        },
        "store": {"degraded": store.degraded, "held_changes": store.held_changes,
                  "failed_writes": store.failed_writes,
                  "refused_changes": store.refused_changes},
    }


__all__ = ["SIGNUP_BONUSES", "SIGNUP_NEXT_STEPS", "dollars", "error_body", "health", "iso",
           "verification_view", "network_status", "node_view", "percent", "status_counts",
           "task_created", "task_view", "unit_offer"]
