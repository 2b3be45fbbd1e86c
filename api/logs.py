# Logging of the service: one line per request, one per task end (node joins and
# leaves: engine.runtime.coordinator), in text or JSON lines.
#
# Theory of operation: everything goes through the standard `logging` module, one
# handler on the root logger (configure_logging), whose formatter is chosen by name
# from LOG_FORMATS (`neurogrid serve --log-format text|json`). The formats are
# engine/logs.py's, shared with `neurogrid worker` (the local workers `serve`
# starts get the server's --log-format). Records may carry structured fields in
# `extra` (event, task_id, model, ...): the JSON formatter writes them as keys
# beside the message, the text formatter only the message.
#
# Why requests were logged twice with `--access-log`: hypercorn (0.17/0.18) logs an
# access line when the response's stream closes, and a second one, with status
# "-", when its connection reports the stream closed before hypercorn marked it so
# (http_stream.py: `_send_closed` sends EndBody before setting its state). So
# hypercorn's access log stays off, and the app logs each request itself, once,
# after its response (install_request_log), on the `neurogrid.access` logger,
# which is enabled by `--access-log`.
#
# Rules:
# - Loggers: neurogrid.access (requests), neurogrid.tasks (task ends),
#   engine.runtime.coordinator (node joins, leaves); levels INFO.
# - A log call never raises into the request or the update writer.
from __future__ import annotations

import logging

from quart import Quart, Request, Response

from engine.logs import LOG_FORMATS, JsonFormatter, install_log_handler

from .request_hooks import request_hooks
from .transitions import TaskTransition

access_log = logging.getLogger("neurogrid.access")
task_log = logging.getLogger("neurogrid.tasks")


def configure_logging(log_format: str = "text", access: bool = False,
                      level: int = logging.INFO) -> None:
    """One handler (stderr) on the root logger with the named format
    (engine/logs.py, the same lines as the workers'); request lines only with
    `access`."""
    install_log_handler(log_format, level)
    access_log.setLevel(logging.INFO if access else logging.WARNING)


def install_request_log(app: Quart) -> None:
    """Log each request of `app` once, after its response, on neurogrid.access."""

    def log_request(req: Request, response: Response, seconds: float) -> None:
        if access_log.isEnabledFor(logging.INFO):
            ms = seconds * 1000
            client = req.remote_addr or "-"
            path = req.path
            access_log.info("%s %s %s %d %.1fms", client, req.method, req.full_path
                            if req.query_string else path, response.status_code, ms,
                            extra={"event": "request", "client": client,
                                   "method": req.method, "path": path,
                                   "status": response.status_code, "ms": round(ms, 2)})

    request_hooks(app).finish.append(log_request)


def log_task_end(t: TaskTransition) -> None:
    """A transition listener: one line when a task ends."""
    if not t.final:
        return
    seconds = t.turnaround_seconds or 0.0
    task_log.info("task %s %s: model %s, node %s, %.3fs, cost $%.6f", t.task_id, t.status,
                  t.model, t.node_id or "-", seconds, t.cost or 0.0,
                  extra={"event": "task_end", "task_id": t.task_id, "state": t.status,
                         "model": t.model, "priority": t.priority, "node_id": t.node_id,
                         "seconds": round(seconds, 4), "cost": t.cost or 0.0,
                         "error": t.error})


__all__ = ["JsonFormatter", "LOG_FORMATS", "configure_logging", "install_request_log",
           "log_task_end"]
