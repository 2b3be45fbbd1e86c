"""The pure scheduling core (sans-IO). See DESIGN.md, "Rules of the core".

One entry point: ``Scheduler.handle(event, now) -> list[Decision]`` plus
``Scheduler.next_deadline()``. Everything else here is values and pure helpers.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .catalog import (
    DEFAULT_MODEL, GPU_CLASSES, MODELS, CatalogError, GpuClass, ModelSpec,
    estimate_prompt_tokens, gpu_class, gpu_class_name, gpu_rate, openai_cost, resolve_model,
    work_units,
)
from .kinds import TASK_KINDS, VERIFY_FIELD, RequestField, TaskKind, UnknownTaskKind, task_kind
from .events import (
    Assign, Cancel, Cancelled, Complete, Decision, DeliveryFailed, Drop, Event, Expire,
    Fail, Hold, NodeDraining, NodeHeartbeat, NodeJoined, NodeLost, NodeSpec, Priority,
    Quarantine, Reject, Requeue, TaskCancelled, TaskFailed, TaskFaulted, TaskFinished,
    TaskSpec, TaskState, TaskSubmitted, Tick, Usage, VerificationReported, Verified,
    VerifyMode, WakeAt,
)
from .reputation import Reputation, ReputationTable, sampling_rate
from .metering import usage_problem
from .ratelimit import TokenBucket, Verdict

if TYPE_CHECKING:
    from .journal import (
        JournalEntry, JournalError, JournalHeader, entry_line, header_line, parse_line,
        read_sessions,
    )
    from .placement import DEFAULT_POLICY, POLICIES, make_policy
    from .pricing import PRICING, Quote, make_pricing
    from .queue import DEFAULT_HEAD_START
    from .scheduler import Scheduler
    from .speed import MeasuredSpeed
    from .state import SchedulerConfig, TaskRecord
    from .verification import TrustPolicy
    from .views import NetworkSnapshot, NodeSnapshot

# The scheduler and what only it needs load on first use (PEP 562), so that a
# program that needs only the core's values (the worker: catalog, events) does not
# load the scheduler: `from engine.core import Scheduler` works as before.
_LAZY = {
    "journal": ("JournalEntry", "JournalError", "JournalHeader", "entry_line", "header_line",
                "parse_line", "read_sessions"),
    "placement": ("DEFAULT_POLICY", "POLICIES", "make_policy"),
    "pricing": ("PRICING", "Quote", "make_pricing"),
    "queue": ("DEFAULT_HEAD_START",),
    "scheduler": ("Scheduler",),
    "speed": ("MeasuredSpeed",),
    "state": ("SchedulerConfig", "TaskRecord"),
    "views": ("NetworkSnapshot", "NodeSnapshot"),
    "verification": ("TrustPolicy",),
}
_LAZY_MODULE = {name: module for module, names in _LAZY.items() for name in names}


if not TYPE_CHECKING:  # type checkers see the imports above, and no catch-all
    def __getattr__(name: str) -> Any:
        module = _LAZY_MODULE.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value  # once loaded, a plain module attribute
        return value

__all__ = [
    "DEFAULT_MODEL", "GPU_CLASSES", "MODELS", "CatalogError", "GpuClass", "ModelSpec",
    "estimate_prompt_tokens", "gpu_class", "gpu_class_name", "gpu_rate", "openai_cost",
    "resolve_model", "work_units", "TASK_KINDS", "RequestField", "TaskKind", "UnknownTaskKind",
    "task_kind",
    "Assign", "Cancel", "Cancelled", "Complete", "Decision", "DeliveryFailed", "Drop",
    "Event", "Expire", "Fail", "NodeDraining", "NodeHeartbeat", "NodeJoined", "NodeLost",
    "NodeSpec", "Priority", "Reject", "Requeue", "TaskCancelled", "TaskFailed",
    "TaskFaulted", "TaskFinished", "TaskSpec", "TaskState", "TaskSubmitted", "Tick", "Usage", "WakeAt",
    "JournalEntry", "JournalError", "JournalHeader", "entry_line", "header_line",
    "parse_line", "read_sessions",
    "DEFAULT_POLICY", "POLICIES", "make_policy", "PRICING", "Quote", "make_pricing",
    "DEFAULT_HEAD_START", "TokenBucket", "Verdict", "usage_problem",
    "NetworkSnapshot", "NodeSnapshot", "Scheduler", "SchedulerConfig", "TaskRecord",
    "VERIFY_FIELD", "Hold", "Quarantine", "VerificationReported", "Verified", "VerifyMode",
    "Reputation", "ReputationTable", "sampling_rate", "TrustPolicy",
    "MeasuredSpeed",
]
