"""Logs: one line per request (hypercorn's own access log stays off), one per task
end with its id, model, node, seconds, cost and state; JSON lines on request."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from api.__main__ import build_parser, server_config
from api.logs import JsonFormatter, configure_logging

from .conftest import fake_worker, running_app, wait_for_status


async def test_each_request_and_each_task_end_is_logged_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="neurogrid.access")
    caplog.set_level(logging.INFO, logger="neurogrid.tasks")
    async with running_app(tmp_path / "l.db") as api:
        async with fake_worker(api, name="logs") as worker:
            task_id = (await api.submit())["task_id"]
            await worker.next_assign()
            api.clock.now += 1.25
            await worker.finish(task_id, "hi")
            await wait_for_status(api, task_id, "completed")
        assert (await api.client.get("/api/nothing")).status_code == 404
    requests = [r for r in caplog.records if r.name == "neurogrid.access"]
    posts = [r for r in requests if getattr(r, "method", None) == "POST"]
    assert len(posts) == 1 and posts[0].status == 200 and posts[0].path == "/api/tasks"
    assert [r.status for r in requests if r.path == "/api/nothing"] == [404]
    (end,) = [r for r in caplog.records if r.name == "neurogrid.tasks"]
    assert (end.task_id, end.state, end.model, end.node_id, end.seconds) == (
        task_id, "completed", "llama2:7b", "node_logs", 1.25)
    assert end.cost > 0 and task_id in end.getMessage() and "node_logs" in end.getMessage()


def test_json_lines_carry_the_structured_fields() -> None:
    record = logging.LogRecord("neurogrid.tasks", logging.INFO, __file__, 1, "task %s ended",
                               ("t1",), None)
    record.task_id, record.cost = "t1", 0.5
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "task t1 ended" and line["logger"] == "neurogrid.tasks"
    assert (line["task_id"], line["cost"], line["level"]) == ("t1", 0.5, "info")
    assert line["time"].endswith("Z")


def test_serve_options_select_the_format_and_keep_hypercorn_access_log_off() -> None:
    args = build_parser().parse_args(["--log-format", "json", "--access-log"])
    assert (args.log_format, args.access_log) == ("json", True)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--log-format", "xml"])
    assert server_config(args).accesslog is None
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    try:
        configure_logging("json", access=False)
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        assert not logging.getLogger("neurogrid.access").isEnabledFor(logging.INFO)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved:
            root.addHandler(handler)
        root.setLevel(level)
        logging.getLogger("neurogrid.access").setLevel(logging.NOTSET)
