# The API's JSON shapes, as TypedDicts: what the SDK's calls return is the server's
# JSON, typed. The API reference is the contract: each field it shows is required
# here with its type; fields the server adds beyond it are NotRequired, so these
# types also describe a server that only has the reference's fields.
from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

TaskStatus = Literal["queued", "running", "completed", "failed", "cancelled", "expired",
                     "rejected"]
FINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled", "expired",
                                            "rejected"})


class NodeRef(TypedDict):
    id: str | None
    location: str | None
    gpu: NotRequired[str]


class CostComparison(TypedDict):
    openai: str
    savings: str


class CostQuote(TypedDict):
    estimated: str
    comparison: CostComparison
    estimated_usd: NotRequired[float]


class Submission(TypedDict):
    """The answer to POST /api/tasks."""
    success: bool
    task_id: str
    status: str
    estimated_time: str
    cost: CostQuote
    node: NotRequired[NodeRef]
    message: NotRequired[str]
    model: NotRequired[str]
    priority: NotRequired[str]
    created_at: NotRequired[str]


class TaskView(TypedDict):
    """One task, as GET /api/tasks/<id> shows it (its "task" member)."""
    id: str
    status: str
    result: str | None
    created_at: str | None
    completed_at: str | None
    processing_time: float
    cost: float
    tokens_used: int
    node: NodeRef | None
    model: NotRequired[str]
    priority: NotRequired[str]
    started_at: NotRequired[str | None]
    estimated_cost: NotRequired[float]
    error: NotRequired[str | None]
    params: NotRequired[dict[str, Any]]


class TaskPage(TypedDict):
    """GET /api/tasks: the caller's own tasks, newest first."""
    success: bool
    tasks: list[TaskView]
    count: int
    next_cursor: str | None


class CancelResult(TypedDict):
    success: bool
    message: str
    task: TaskView


class SignupBonuses(TypedDict):
    free_tasks: int
    lifetime_discount: int
    priority_support: bool
    early_access: bool


class BetaSignup(TypedDict):
    success: bool
    message: str
    signup_id: str
    bonuses: SignupBonuses
    next_steps: list[str]
    already_registered: NotRequired[bool]


class NetworkCounters(TypedDict):
    nodes_online: int
    total_tasks: int
    completed_tasks: int
    queued_tasks: int
    success_rate: float
    avg_response_time: str
    cost_savings_vs_openai: str
    uptime: str
    running_tasks: NotRequired[int]
    failed_tasks: NotRequired[int]
    cancelled_tasks: NotRequired[int]
    utilization: NotRequired[float]


class NetworkNode(TypedDict):
    id: str
    location: str
    status: str
    gpu: str
    tasks_processed: int
    name: NotRequired[str]
    models: NotRequired[list[str]]
    slots: NotRequired[int]
    running: NotRequired[int]
    price_per_hour: NotRequired[float]


class NetworkStats(TypedDict):
    beta_signups: int
    total_compute_time: str
    total_savings: str


class NetworkStatus(TypedDict):
    success: bool
    timestamp: str
    network: NetworkCounters
    nodes: list[NetworkNode]
    stats: NetworkStats


class HealthMemory(TypedDict):
    used: str
    total: str
    used_bytes: NotRequired[int]
    total_bytes: NotRequired[int]


class HealthNetwork(TypedDict):
    nodes_online: int
    total_tasks: int
    beta_signups: int
    queued_tasks: NotRequired[int]
    running_tasks: NotRequired[int]


class Health(TypedDict):
    status: str
    service: str
    version: str
    environment: str
    timestamp: str
    uptime: int
    uptime_human: str
    memory: HealthMemory
    network: HealthNetwork


class ModelPricing(TypedDict):
    unit: str
    per_unit_usd: float
    per_1000_units: str
    gpu: str
    openai_reference: Any


class ModelInfo(TypedDict):
    id: str
    aliases: list[str]
    description: str
    task_type: str
    available: bool
    nodes_online: int
    queued_tasks: int
    pricing: ModelPricing


class ModelList(TypedDict):
    success: bool
    models: list[ModelInfo]
    gpu_classes: NotRequired[dict[str, dict[str, float]]]


class StreamEvent(TypedDict):
    """One server-sent event of GET /api/tasks/<id>/stream: `status` ({"status"}),
    `progress` (the worker's partial output: {"tokens": [...], "index"}) or `done`
    (the final task view)."""
    event: str
    data: dict[str, Any]


__all__ = [
    "BetaSignup", "CancelResult", "CostComparison", "CostQuote", "FINAL_STATUSES", "Health",
    "HealthMemory", "HealthNetwork", "ModelInfo", "ModelList", "ModelPricing", "NetworkCounters",
    "NetworkNode", "NetworkStats", "NetworkStatus", "NodeRef", "SignupBonuses", "StreamEvent",
    "Submission", "TaskPage", "TaskStatus", "TaskView",
]
