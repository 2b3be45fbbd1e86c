"""The node operator's worker: ``neurogrid worker`` (``python -m engine.worker``).

``agent`` speaks the worker protocol to the coordinator (connect, heartbeat, run
tasks, reconnect, drain); ``node`` says what this machine is and runs model
runners in threads; ``runners`` holds the model runners themselves.
"""
from __future__ import annotations

from engine.worker.agent import (
    CoordinatorList, CoordinatorUnreachable, Executor, ProgressBuffer, Worker, WorkerConfig,
    WorkerRefused, websocket_connector,
)
from engine.worker.node import (
    DEMO_MODEL, Hardware, ModelSource, ThreadedExecutor, detect_gpu, load_models, usable_gpu,
)

__all__ = [
    "CoordinatorList", "CoordinatorUnreachable", "Executor", "ProgressBuffer", "Worker", "WorkerConfig",
    "WorkerRefused", "websocket_connector",
    "DEMO_MODEL", "Hardware", "ModelSource", "ThreadedExecutor", "detect_gpu", "load_models",
    "usable_gpu",
]
