"""Finding 7 of issue 11, the smaller ones: a subnormal temperature is refused (and
the sampler never makes NaN of any temperature), a websocket route's error is
logged as itself (not masked by the error handler reading `request`), a corrupt
database file is one line naming the file and what to do, a 405 carries its
Allow header, and a --trusted-proxy's X-Forwarded-For tells anonymous clients
apart (from other peers the header is ignored)."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from api import ApiConfig, create_app
from engine.worker.runners.textgen import pick_token
from tests.api.conftest import Harness

from .serving import REPO, serving


@pytest.mark.parametrize("temperature", [1e-310, 5e-324, 1e-5, -1e-300])
async def test_a_subnormal_temperature_is_refused_naming_the_field(
        api: Harness, temperature: float) -> None:
    response = await api.client.post("/api/tasks", json={"prompt": "hi",
                                                          "temperature": temperature})
    assert response.status_code == 400
    assert "'temperature'" in (await response.get_json())["details"]


async def test_small_but_meaningful_temperatures_are_accepted(api: Harness) -> None:
    for temperature in (0, 0.0, 1e-3, 0.7, 2):
        assert (await api.submit({"prompt": "hi", "temperature": temperature}))["success"]


@pytest.mark.parametrize("temperature", [1e-310, 5e-324, 1e-12, 1e-6, 1e-3, 0.7, 2.0])
def test_the_sampler_never_makes_nan(temperature: float) -> None:
    rng = np.random.default_rng(7)
    cases = [np.array([1.0, 30.0, 2.0, -5.0], dtype=np.float32),
             np.array([-1e30, 1e30, 0.0], dtype=np.float64),
             np.array([np.nan, 3.0, 1.0]), np.array([1.0, np.inf, 2.0])]
    with np.errstate(all="raise"):  # no overflow, no invalid operation
        for logits in cases:
            for top_p in (1.0, 0.5, 1e-9):
                token = pick_token(logits, temperature, top_p, rng)
                assert 0 <= token < len(logits) and not np.isnan(logits[token])
    if temperature <= 1e-6:  # (nearly) greedy
        assert pick_token(cases[0], temperature, 1.0, rng) == 1


async def test_a_websocket_error_is_logged_as_itself(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(ApiConfig(db=str(tmp_path / "ws.db")))

    @app.websocket("/test/boom")
    async def boom() -> None:
        raise LookupError("the websocket's own error")

    with caplog.at_level(logging.ERROR):
        async with app.test_app() as test_app:
            try:
                async with test_app.test_client().websocket("/test/boom") as ws:
                    await ws.send("x")
            except Exception:
                pass  # the client sees the socket refused; the log is what matters
    logged = [r for r in caplog.records if r.exc_info]
    assert any("unexpected error in websocket /test/boom" in r.getMessage() for r in logged)
    assert any(isinstance(r.exc_info[1], LookupError) for r in logged if r.exc_info)
    assert not any("outside of" in str(r.exc_info[1]) for r in logged if r.exc_info)


def test_a_corrupt_database_is_one_line_naming_the_file(tmp_path: Path) -> None:
    db = tmp_path / "corrupt.db"
    db.write_bytes(b"this is not a database" * 400)
    done = subprocess.run([sys.executable, "-m", "engine.cli", "serve", "--port", "0",
                           "--db", str(db), "--local-workers", "0"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(db) in lines[0] and "restore it from a backup" in lines[0]


async def test_a_405_carries_its_allow_header(api: Harness) -> None:
    response = await api.client.put("/api/tasks")
    assert response.status_code == 405
    allowed = {m.strip() for m in response.headers["Allow"].split(",")}
    assert {"GET", "POST"} <= allowed
    body = await response.get_json()
    assert body["success"] is False and set(body) == {"success", "error", "details",
                                                      "timestamp"}


def remaining(client: httpx.Client, forwarded_for: str | None) -> int:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    return int(client.get("/api/tasks", headers=headers).headers["X-RateLimit-Remaining"])


def test_a_trusted_proxy_tells_its_clients_apart(tmp_path: Path) -> None:
    with serving(tmp_path, "--trusted-proxy", "127.0.0.1",
                 "--trusted-proxy", "10.0.0.0/8") as (host, port, _):
        with httpx.Client(base_url=f"http://{host}:{port}", timeout=10) as client:
            before = remaining(client, "198.51.100.7")
            submitted = client.post("/api/tasks", json={"prompt": "hi"},
                                    headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.7, "
                                                                "10.1.2.3"})
            assert submitted.status_code == 200
            # counted against the rightmost untrusted address, not the proxy's ...
            assert remaining(client, "198.51.100.7") == before - 1
            assert remaining(client, "203.0.113.9") == before  # the spoofable left part
            assert remaining(client, None) == before  # the proxy itself
    with serving(tmp_path / "direct") as (host, port, _):  # no trusted proxy: ignored
        with httpx.Client(base_url=f"http://{host}:{port}", timeout=10) as client:
            before = remaining(client, None)
            assert client.post("/api/tasks", json={"prompt": "hi"},
                               headers={"X-Forwarded-For": "198.51.100.7"}).status_code == 200
            assert remaining(client, None) == before - 1
            assert remaining(client, "198.51.100.8") == before - 1


def test_a_bad_trusted_proxy_is_refused_at_start(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "engine.cli", "serve", "--port", "0",
                           "--db", str(tmp_path / "x.db"), "--local-workers", "0",
                           "--trusted-proxy", "proxy.example"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--trusted-proxy 'proxy.example'" in done.stderr
