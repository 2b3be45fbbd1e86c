"""Finding 1 of issue 11: the store under a failing disk. A write the disk cannot
take fails its own callers with a clear 503 (the reference's error object), the
store keeps running, /health says "degraded" with a 503 while it lasts, a task
change that could not be written (a completion) is held and written once the disk
has room again - never dropped - and the store recovers by itself. A database file
deleted under the running server stops the process with a non-zero status (a
supervisor restarts it) instead of leaving a zombie that answers but cannot work.
Run on a real small filesystem where the machine allows mounting one, and with an
injected disk-full fault everywhere (tests/faults/disks.py)."""
from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import trio

from tests.api.conftest import Harness, fake_worker, running_app, wait_for_status

from .serving import read_response, request_bytes, serving

HEALTH_FIELDS = {"status", "service", "version", "environment", "timestamp", "uptime",
                 "uptime_human", "memory", "network"}


async def health(api: Harness) -> tuple[int, dict[str, Any]]:
    response = await api.client.get("/health")
    return response.status_code, await response.get_json()


async def test_a_full_disk_degrades_the_store_and_nothing_is_lost(disk: Any) -> None:
    async with running_app(disk.root / "api.db") as api:
        disk.wrap(api.services.store)
        async with fake_worker(api) as worker:
            held = (await api.submit())["task_id"]
            assigned = await worker.next_assign()
            assert assigned["task_id"] == held
            await wait_for_status(api, held, "running")

            disk.fill()
            await worker.finish(held, "finished while the disk was full")
            refused = await api.client.post("/api/tasks", json={"prompt": "Hello"})
            assert refused.status_code == 503
            body = await refused.get_json()
            assert set(body) == {"success", "error", "details", "timestamp"}
            assert body["success"] is False and body["error"] == "Service unavailable"
            assert "disk" in body["details"] and "full" in body["details"]
            assert refused.headers["Retry-After"].isdigit()

            with trio.fail_after(5):  # the completion is held, not dropped
                while True:
                    status, report = await health(api)
                    if report["store"]["held_changes"] >= 1:
                        break
                    await trio.sleep(0.02)
            assert status == 503 and report["status"] == "degraded"
            assert "full" in report["reason"] and HEALTH_FIELDS <= set(report)
            assert report["store"]["failed_writes"] >= 2
            task = (await (await api.client.get(f"/api/tasks/{held}")).get_json())["task"]
            assert task["status"] == "running"  # reads still work

            disk.free()  # the store recovers by itself, and writes what it held
            done = await wait_for_status(api, held, "completed", timeout=10)
            assert done["result"] == "finished while the disk was full"
            with trio.fail_after(5):
                while (await health(api))[0] != 200:
                    await trio.sleep(0.02)
            status, report = await health(api)
            assert report["status"] == "OK" and report["reason"] is None
            assert report["store"]["held_changes"] == 0
            again = await api.submit()  # and takes new work
            assert again["success"] is True


async def test_held_changes_keep_their_order_per_task(disk: Any) -> None:
    async with running_app(disk.root / "api.db") as api:
        disk.wrap(api.services.store)
        async with fake_worker(api) as worker:
            ids = [(await api.submit())["task_id"] for _ in range(3)]
            disk.fill()
            for _ in ids:  # running, then completed, both held behind each other
                frame = await worker.next_assign()
                await worker.finish(frame["task_id"], f"done {frame['task_id']}")
            with trio.fail_after(5):  # all ended in the coordinator, their changes held
                while (api.services.coordinator.snapshot().running
                       or (await health(api))[1]["store"]["held_changes"] < len(ids)):
                    await trio.sleep(0.02)
            disk.free()
            for task_id in ids:
                task = await wait_for_status(api, task_id, "completed", timeout=10)
                assert task["result"] == f"done {task_id}" and task["node"] is not None


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def post_json(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except (ConnectionError, urllib.error.URLError):
        return 0, {"details": "connection refused: the server is gone (corrupt, stopped)"}


def test_a_database_deleted_under_the_server_stops_it_non_zero(tmp_path: Path) -> None:
    db = tmp_path / "gone.db"
    with serving(tmp_path, db=db) as (host, port, process):
        assert get_json(f"http://{host}:{port}/health")[0] == 200
        db.unlink()
        with __import__("socket").create_connection((host, port), timeout=5) as sock:
            sock.sendall(request_bytes("POST", "/api/tasks", b'{"prompt": "hello"}',
                                       headers={"Content-Type": "application/json"}))
            status, _, body = read_response(sock, 10)
        assert status == 503, body
        assert "deleted or replaced" in json.loads(body)["details"]
        deadline = time.monotonic() + 30
        while process.poll() is None:
            assert time.monotonic() < deadline, "the server went on without its database"
            time.sleep(0.1)
        assert process.returncode == 1
    log = (tmp_path / "serve.log").read_text()
    assert "stopped because the service failed" in log and "deleted or replaced" in log


def test_a_database_corrupted_under_the_server_stops_it_non_zero(tmp_path: Path) -> None:
    db = tmp_path / "corrupt.db"
    with serving(tmp_path, db=db) as (host, port, process):
        base = f"http://{host}:{port}"
        assert get_json(f"{base}/health")[0] == 200
        with open(db, "r+b") as file:  # the header: no longer a SQLite file
            file.write(b"overwritten by something else")
        # the writer checks the header every few seconds (reads may still be served
        # from the WAL): writes are refused with a 503 within a bound, then it stops
        deadline = time.monotonic() + 20
        for attempt in range(1000):  # signups: writes without a rate limit
            assert time.monotonic() < deadline, "writes went on into a corrupt database"
            status, body = post_json(f"{base}/api/beta/signup",
                                     {"email": f"probe{attempt}@example.com"})
            if status != 200:
                break
            time.sleep(0.25)
        assert status == 503 and "corrupt" in body["details"], body
        deadline = time.monotonic() + 30
        while process.poll() is None:
            assert time.monotonic() < deadline, "the server went on with a corrupt database"
            time.sleep(0.1)
        assert process.returncode == 1
    assert "stopped because the service failed" in (tmp_path / "serve.log").read_text()
