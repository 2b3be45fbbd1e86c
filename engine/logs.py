# Log line formats shared by every NeuroGrid process: `neurogrid serve` (api/logs.py
# adds its request and task-end logs on top) and `neurogrid worker`, so that one
# log pipeline reads them all. Standard `logging` only: no Quart, no trio, so the
# worker can use it without loading the API's stack.
#
# Theory of operation: one handler (stderr) on the root logger (install_log_handler)
# whose formatter is chosen by name from LOG_FORMATS (`--log-format text|json`).
# Records may carry structured fields in `extra` (event, task_id, model, ...): the
# JSON formatter writes them as keys beside the message, the text formatter only
# the message.
#
# Rules:
# - JSON lines: one object a line with the keys time (ISO-8601 UTC, milliseconds),
#   level, logger, message, then the record's `extra` fields, then `exception` if
#   any. The same keys in every process.
# - Text lines: each command may choose its own text layout (`text_format`); the
#   JSON layout is the same everywhere.
from __future__ import annotations

import json
import logging
import sys
import time
from typing import Callable

TEXT_FORMAT = "%(asctime)s %(name)s %(message)s"
# attributes every LogRecord has: what is not among them came in `extra`
STANDARD_ATTRIBUTES = frozenset(logging.LogRecord("x", 0, "x", 0, "x", None, None).__dict__) | {
    "message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (ISO-8601 UTC, milliseconds), level, logger,
    message, the record's `extra` fields, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in STANDARD_ATTRIBUTES and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


# name -> a formatter, given the command's text layout (json ignores it)
LOG_FORMATS: dict[str, Callable[[str], logging.Formatter]] = {
    "text": logging.Formatter,
    "json": lambda text_format: JsonFormatter(),
}


def install_log_handler(log_format: str = "text", level: int | str = logging.INFO,
                        text_format: str = TEXT_FORMAT) -> None:
    """One handler (stderr) on the root logger, in the named format, replacing any
    handler it had; the root logger at `level`."""
    factory = LOG_FORMATS.get(log_format)
    if factory is None:
        raise ValueError(f"unknown log format {log_format!r} (known: {', '.join(LOG_FORMATS)})")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(factory(text_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


__all__ = ["JsonFormatter", "LOG_FORMATS", "STANDARD_ATTRIBUTES", "TEXT_FORMAT",
           "install_log_handler"]
