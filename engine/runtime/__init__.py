"""The live network's coordinator side: trio actors around the pure core.

``open_coordinator`` runs the Coordinator actor (single writer of the Scheduler);
``serve_websocket`` (or the API's websocket adapter) hands each worker connection
to ``Coordinator.serve_connection``. ``codec`` is the worker protocol, version 1.
``JournalFile`` appends the coordinator's steps to a file (``journal_path``).
"""
from __future__ import annotations

from .codec import MAX_FRAME_BYTES, PROTOCOL_VERSION, ProtocolError, decode, encode
from .connection import (
    WORKER_PATH, Connection, ConnectionClosed, MemoryConnection, WebSocketConnection,
    memory_connection_pair, serve_websocket,
)
from .coordinator import (
    Coordinator, CoordinatorClosed, CoordinatorConfig, TokenVerifier, open_coordinator,
)
from .journal import JournalFile, JournalFileError
from .session import NodeIdentity, NodeSession, gpu_class_name
from .updates import SubmitOutcome, TaskUpdate, UpdateSink

__all__ = [
    "MAX_FRAME_BYTES", "PROTOCOL_VERSION", "ProtocolError", "decode", "encode",
    "WORKER_PATH", "Connection", "ConnectionClosed", "MemoryConnection",
    "WebSocketConnection", "memory_connection_pair", "serve_websocket",
    "Coordinator", "CoordinatorClosed", "CoordinatorConfig", "SubmitOutcome", "TaskUpdate",
    "TokenVerifier", "UpdateSink", "open_coordinator",
    "JournalFile", "JournalFileError",
    "NodeIdentity", "NodeSession", "gpu_class_name",
]
