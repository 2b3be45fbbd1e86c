"""The live network's coordinator side: trio actors around the pure core.

``open_coordinator`` runs the Coordinator actor (single writer of the Scheduler);
``engine.protocol.serve_websocket`` (or the API's websocket adapter) hands each
worker connection to ``Coordinator.serve_connection``. The worker protocol itself
(codec, connections) is ``engine.protocol``. ``JournalFile`` appends the
coordinator's steps to a file (``journal_path``).
"""
from __future__ import annotations

from .coordinator import (
    Coordinator, CoordinatorClosed, CoordinatorConfig, TokenVerifier, open_coordinator,
)
from .journal import JournalFile, JournalFileError
from .session import NodeIdentity, NodeSession
from .updates import SubmitOutcome, TaskUpdate, UpdateSink

__all__ = [
    "Coordinator", "CoordinatorClosed", "CoordinatorConfig", "SubmitOutcome", "TaskUpdate",
    "TokenVerifier", "UpdateSink", "open_coordinator",
    "JournalFile", "JournalFileError",
    "NodeIdentity", "NodeSession",
]
