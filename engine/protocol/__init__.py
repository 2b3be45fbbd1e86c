"""The worker protocol, version 1: what a worker and the coordinator say to each
other, and the transports they say it over. Both sides import it; it imports
neither (as h11 stands apart from HTTP clients and servers).

``codec`` turns JSON text frames into typed messages and back (pure: no I/O, no
clock, no state); ``connection`` is the one thing either side needs of a
transport (``Connection``: send/receive a text frame, close with a reason) and
its in-memory and trio-websocket adapters. Nothing here loads the coordinator
(``engine.runtime``) or the scheduler (``engine.core.scheduler``).
"""
from __future__ import annotations

from .codec import (
    COORDINATOR_MESSAGES, INT_MAX, INT_MIN, MAX_FRAME_BYTES, MAX_ID_CHARS, PROTOCOL_VERSION, SCHEMAS, TYPES,
    WORKER_MESSAGES, Accepted, AssignTask, CancelTask, Draining, Error, Failed, Gpu,
    Heartbeat, Hello, Message, Progress, ProtocolError, Result, Welcome, decode, encode,
)
from .connection import (
    WORKER_PATH, Connection, ConnectionClosed, ConnectionServer, MemoryConnection,
    WebSocketConnection, memory_connection_pair, serve_websocket,
)

__all__ = [
    "COORDINATOR_MESSAGES", "INT_MAX", "INT_MIN", "MAX_FRAME_BYTES", "MAX_ID_CHARS", "PROTOCOL_VERSION", "SCHEMAS",
    "TYPES", "WORKER_MESSAGES", "Accepted", "AssignTask", "CancelTask", "Draining", "Error",
    "Failed", "Gpu", "Heartbeat", "Hello", "Message", "Progress", "ProtocolError", "Result",
    "Welcome", "decode", "encode",
    "WORKER_PATH", "Connection", "ConnectionClosed", "ConnectionServer", "MemoryConnection",
    "WebSocketConnection", "memory_connection_pair", "serve_websocket",
]
