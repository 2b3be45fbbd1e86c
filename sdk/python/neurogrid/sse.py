# Server-sent events of GET /api/tasks/<id>/stream, and following one task's stream
# to its end across dropped connections: pure state machines fed with bytes and
# times, driven by the clients' I/O loops.
#
# Theory of operation: the server sends a `status` event at once, then `progress`
# events with the worker's partial output ({"tokens": [...], "index": n}) and
# `status` changes, and a final `done` event with the task view; comments
# (": keep-alive") come every 15 s of silence. A reconnect gets the status again,
# one `progress` event with all the text streamed so far (`replayed: true`), and
# the events from then on (an ended task: its `done` at once), so waiting survives
# a dropped connection. TextAssembler keeps a stream's pieces adding up to the
# result: of a replayed event it yields only what was not yielded yet, and at the
# end what the stream missed (a slow reader's dropped events) from the result.
#
# Rules:
# - The parser follows the WHATWG event-stream format: lines end in \n, \r\n or
#   \r; "field: value"; data lines join with \n; a blank line dispatches; comments
#   and unknown fields are ignored; an event without data is dropped.
# - Reconnects are bounded: after `retry.max_retries` consecutive failures with no
#   event between them the wait raises NeuroGridConnectionError; past the caller's
#   deadline it raises NeuroGridTimeoutError.
from __future__ import annotations

import codecs
import json
from typing import Any, cast

from .config import ClientConfig
from .errors import NeuroGridConnectionError, NeuroGridTimeoutError
from .protocol import Request, stream_request
from .types import StreamEvent, TaskView

STREAM_READ_TIMEOUT = 45.0  # seconds of silence before a reconnect (keep-alives: 15 s)


class EventParser:
    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        self._buffer += self._decoder.decode(chunk)
        events: list[StreamEvent] = []
        while True:
            cut = min((i for i in (self._buffer.find("\r"), self._buffer.find("\n")) if i >= 0),
                      default=-1)
            if cut < 0 or (self._buffer[cut] == "\r" and cut == len(self._buffer) - 1):
                return events  # no full line yet (a final \r may be half of \r\n)
            line = self._buffer[:cut]
            skip = 2 if self._buffer.startswith("\r\n", cut) else 1
            self._buffer = self._buffer[cut + skip:]
            event = self._line(line)
            if event is not None:
                events.append(event)

    def _line(self, line: str) -> StreamEvent | None:
        if not line:
            kind, data = self._event or "message", self._data
            self._event, self._data = "", []
            if not data:
                return None
            return {"event": kind, "data": parse_data("\n".join(data))}
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


def parse_data(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {"text": text}
    return value if isinstance(value, dict) else {"value": value}


def tokens_of(event: StreamEvent) -> list[str]:
    """The generated text pieces a `progress` event carries (none for other events)."""
    if event["event"] != "progress":
        return []
    tokens = event["data"].get("tokens")
    return [t for t in tokens if isinstance(t, str)] if isinstance(tokens, list) else []


def missed_text(streamed: str, task: TaskView | None) -> str:
    """The end of a completed text task's result that the stream did not carry
    (a task that ended before the stream opened; progress events a slow reader
    lost), so that a stream's pieces always add up to the result; "" when there
    is nothing to add or the stream is not a prefix of it."""
    if task is None or task.get("status") != "completed":
        return ""
    result = task.get("result")
    if not isinstance(result, str) or task.get("content_type", "text/plain") != "text/plain":
        return ""
    return result[len(streamed):] if result.startswith(streamed) else ""


class TextAssembler:
    """The text a task's stream yielded so far, across reconnects: `pieces(event)`
    is what an event adds (a replayed event, the first of every connection,
    carries everything so far: only its part not yielded yet), `rest(task)` what
    the final task adds."""

    def __init__(self) -> None:
        self.text = ""

    def pieces(self, event: StreamEvent) -> list[str]:
        tokens = tokens_of(event)
        if tokens and event["data"].get("replayed") is True:
            whole = "".join(tokens)
            new = whole[len(self.text):] if whole.startswith(self.text) else ""
            tokens = [new] if new else []
        self.text += "".join(tokens)
        return tokens

    def rest(self, task: TaskView | None) -> str:
        rest = missed_text(self.text, task)
        self.text += rest
        return rest


class TaskWatch:
    """One task's stream, followed to its `done` event across reconnects."""

    def __init__(self, config: ClientConfig, task_id: str, deadline: float | None) -> None:
        self.config = config
        self.task_id = task_id
        self.deadline = deadline  # on the caller's monotonic clock; None: no limit
        self.final: TaskView | None = None
        self.failures = 0
        self._parser = EventParser()

    def request(self) -> Request:
        self._parser = EventParser()  # a new connection starts a new stream
        return stream_request(self.config, self.task_id)

    def read_timeout(self, now: float) -> float:
        """The read timeout for the next connection; raises past the deadline."""
        if self.deadline is None:
            return STREAM_READ_TIMEOUT
        left = self.deadline - now
        if left <= 0:
            raise NeuroGridTimeoutError(f"task {self.task_id} did not end in time")
        return min(left, STREAM_READ_TIMEOUT)

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        events = self._parser.feed(chunk)
        if events:
            self.failures = 0
        for event in events:
            if event["event"] == "done":
                self.final = cast(TaskView, event["data"])
        return events

    def reconnect_delay(self, now: float, error: Exception | None, jitter: float) -> float:
        """After the stream broke (error) or closed before `done` (None): seconds to
        wait before reconnecting; raises when out of retries or of time."""
        self.read_timeout(now)  # raises past the deadline
        delay = self.config.retry.after_failure(self.failures, jitter)
        self.failures += 1
        if delay is None:
            raise NeuroGridConnectionError(
                f"the stream of task {self.task_id} broke {self.failures} times in a row: "
                f"{error or 'closed before the task ended'}") from error
        return delay if self.deadline is None else max(0.0, min(delay, self.deadline - now))


__all__ = ["EventParser", "STREAM_READ_TIMEOUT", "TaskWatch", "TextAssembler", "missed_text",
           "parse_data", "tokens_of"]
