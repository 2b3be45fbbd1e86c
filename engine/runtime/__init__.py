"""The live network's coordinator side: trio actors around the pure core.

``open_coordinator`` runs the Coordinator actor (single writer of the Scheduler);
``engine.protocol.serve_websocket`` (or the API's websocket adapter) hands each
worker connection to ``Coordinator.serve_connection``, which runs a
``NodeSession`` for it. The worker protocol itself (codec, connections) is
``engine.protocol``. The coordinator tells its runner about tasks with
``TaskUpdate``s (a union of precise types, ``updates``) and ``SubmitOutcome``s;
its steps go to journal sinks (``ListJournal``, ``FileJournal`` around a
``JournalFile``).
"""
from __future__ import annotations

from .config import CoordinatorConfig
from .coordinator import Coordinator, CoordinatorClosed, TokenVerifier
from .journal import FileJournal, JournalFile, JournalFileError, JournalSink, ListJournal
from .guard import ReconnectLimiter
from .meter import Meter, TokenizerSource
from .messages import (
    ActorMessage, CancelRequest, Reply, SessionJoined, SessionLeft, SessionReported,
    SubmitRequest, Submission, TaskInput,
)
from .node_tasks import NodeTasks
from .service import open_coordinator
from .session import (
    NodeIdentity, NodeReport, NodeSession, Refused, SessionHost, SessionLimits,
)
from .updates import (
    FINAL_UPDATES, CancelledUpdate, CompletedUpdate, ExpiredUpdate, FailedUpdate,
    FinalUpdate, ProgressUpdate, QueuedUpdate, RejectedUpdate, RequeuedUpdate, RunningUpdate,
    StateUpdate, SubmitOutcome, TaskUpdate, UpdateSink, VerificationUpdate,
)

__all__ = [
    "Coordinator", "CoordinatorClosed", "CoordinatorConfig", "TokenVerifier",
    "open_coordinator",
    "FileJournal", "JournalFile", "JournalFileError", "JournalSink", "ListJournal",
    "ActorMessage", "CancelRequest", "Reply", "SessionJoined", "SessionLeft",
    "SessionReported", "SubmitRequest", "Submission", "TaskInput",
    "NodeTasks",
    "NodeIdentity", "NodeReport", "NodeSession", "Refused", "SessionHost", "SessionLimits",
    "ReconnectLimiter", "Meter", "TokenizerSource",
    "FINAL_UPDATES", "CancelledUpdate", "CompletedUpdate", "ExpiredUpdate", "FailedUpdate",
    "FinalUpdate", "ProgressUpdate", "QueuedUpdate", "RejectedUpdate", "RequeuedUpdate",
    "RunningUpdate", "StateUpdate", "SubmitOutcome", "TaskUpdate", "UpdateSink", "VerificationUpdate",
]
