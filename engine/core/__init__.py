"""The pure scheduling core (sans-IO). See DESIGN.md, "Rules of the core".

One entry point: ``Scheduler.handle(event, now) -> list[Decision]`` plus
``Scheduler.next_deadline()``. Everything else here is values and pure helpers.
"""
from __future__ import annotations

from .catalog import (
    DEFAULT_MODEL, GPU_CLASSES, MODELS, CatalogError, GpuClass, ModelSpec,
    estimate_prompt_tokens, gpu_class, gpu_rate, openai_cost, resolve_model, work_units,
)
from .kinds import TASK_KINDS, RequestField, TaskKind, UnknownTaskKind, task_kind
from .events import (
    Assign, Cancel, Cancelled, Complete, Decision, DeliveryFailed, Drop, Event, Expire,
    Fail, NodeDraining, NodeHeartbeat, NodeJoined, NodeLost, NodeSpec, Priority, Reject,
    Requeue, TaskCancelled, TaskFailed, TaskFinished, TaskSpec, TaskState, TaskSubmitted,
    Tick, Usage, WakeAt,
)
from .journal import (
    JournalEntry, JournalError, JournalHeader, entry_line, header_line, parse_line,
    read_sessions,
)
from .placement import DEFAULT_POLICY, POLICIES, make_policy
from .pricing import PRICING, Quote, make_pricing
from .queue import DEFAULT_HEAD_START
from .ratelimit import TokenBucket, Verdict
from .scheduler import NetworkSnapshot, NodeSnapshot, Scheduler, SchedulerConfig, TaskRecord

__all__ = [
    "DEFAULT_MODEL", "GPU_CLASSES", "MODELS", "CatalogError", "GpuClass", "ModelSpec",
    "estimate_prompt_tokens", "gpu_class", "gpu_rate", "openai_cost", "resolve_model",
    "work_units", "TASK_KINDS", "RequestField", "TaskKind", "UnknownTaskKind", "task_kind",
    "Assign", "Cancel", "Cancelled", "Complete", "Decision", "DeliveryFailed", "Drop",
    "Event", "Expire", "Fail", "NodeDraining", "NodeHeartbeat", "NodeJoined", "NodeLost",
    "NodeSpec", "Priority", "Reject", "Requeue", "TaskCancelled", "TaskFailed",
    "TaskFinished", "TaskSpec", "TaskState", "TaskSubmitted", "Tick", "Usage", "WakeAt",
    "JournalEntry", "JournalError", "JournalHeader", "entry_line", "header_line",
    "parse_line", "read_sessions",
    "DEFAULT_POLICY", "POLICIES", "make_policy", "PRICING", "Quote", "make_pricing",
    "DEFAULT_HEAD_START", "TokenBucket", "Verdict",
    "NetworkSnapshot", "NodeSnapshot", "Scheduler", "SchedulerConfig", "TaskRecord",
]
