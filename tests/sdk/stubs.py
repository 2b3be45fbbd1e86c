"""A scripted HTTP server on 127.0.0.1 for the SDK's retry and download tests: the
network boundary, where a real server cannot be made to refuse or drop on cue.
Each path has a list of answers, used in order (the last one repeats); DROP closes
the connection after reading the request, without answering. Every request is
recorded with the time it arrived. Leaving the `with` block cuts every delay short,
and a client that hung up before its answer (what the timeout tests do) is not an
error: no handler thread answers late into a later test's captured stderr (one did,
and failed a simulator test in CI)."""
from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from contextlib import contextmanager
from typing import Any, Iterator


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering

    @classmethod
    def json(cls, status: int, value: Any, **headers: str) -> Answer:
        return cls(status, json.dumps(value).encode(),
                   {"Content-Type": "application/json", **headers})


DROP = Answer(status=-1)


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]  # lowercase names
    body: bytes
    at: float  # time.monotonic()


class Stub:
    def __init__(self, script: dict[str, list[Answer]]) -> None:
        self.script = {path: list(answers) for path, answers in script.items()}
        self.seen: list[Seen] = []
        self.url = ""

    def next_answer(self, path: str) -> Answer:
        answers = self.script.get(path.split("?", 1)[0])
        if not answers:
            return Answer.json(404, {"success": False, "error": "Not found",
                                     "details": f"the stub has no {path}"})
        return answers.pop(0) if len(answers) > 1 else answers[0]


@contextmanager
def serve_stub(script: dict[str, list[Answer]]) -> Iterator[Stub]:
    stub = Stub(script)
    closing = threading.Event()

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            if not isinstance(sys.exc_info()[1], ConnectionError):
                super().handle_error(request, client_address)
            # else the client hung up mid-answer, as the timeout tests make it do

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def handle_any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            stub.seen.append(Seen(self.command, self.path,
                                  {k.lower(): v for k, v in self.headers.items()}, body,
                                  time.monotonic()))
            answer = stub.next_answer(self.path)
            if answer is DROP:
                self.close_connection = True
                return
            closing.wait(answer.delay)
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        do_GET = do_POST = do_DELETE = handle_any

    server = Server(("127.0.0.1", 0), Handler)
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        closing.set()
        server.shutdown()
        server.server_close()
