"""CORS: no other origin by default; configured origins get preflights answered
and their responses readable."""
from __future__ import annotations

from pathlib import Path

import pytest

from api.__main__ import api_config, build_parser, main
from api.cors import parse_origins

from .conftest import Harness, running_app

PREFLIGHT = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type"}


async def test_no_other_origin_by_default(api: Harness) -> None:
    response = await api.client.get("/api/models", headers={"Origin": "https://app.example"})
    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers
    response = await api.client.options("/api/tasks", headers=PREFLIGHT)
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_configured_origins_are_allowed(tmp_path: Path) -> None:
    async with running_app(tmp_path / "c.db", cors_origins=("https://app.example",)) as api:
        preflight = await api.client.options("/api/tasks", headers=PREFLIGHT)
        assert preflight.status_code == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
        assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
        refused = await api.client.options(
            "/api/tasks", headers={**PREFLIGHT, "Origin": "https://evil.example"})
        assert refused.status_code == 403
        assert "evil.example" in (await refused.get_json())["details"]
        response = await api.client.post("/api/tasks", json={"prompt": "hi"},
                                         headers={"Origin": "https://app.example"})
        assert response.status_code == 200
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "X-RateLimit-Remaining" in response.headers["Access-Control-Expose-Headers"]
        other = await api.client.get("/api/models", headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in other.headers
    async with running_app(tmp_path / "d.db", cors_origins=("*",)) as api:
        response = await api.client.get("/health", headers={"Origin": "http://any:3000"})
        assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_the_serve_option(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["--cors-origin", "https://a.example",
                                      "--cors-origin", "http://localhost:3000/"])
    assert api_config(args).cors_origins == ("https://a.example", "http://localhost:3000")
    with pytest.raises(ValueError, match="scheme://host"):
        parse_origins(["a.example/path"])
    assert main(["--cors-origin", "ftp://x/y"]) == 2
    assert "--cors-origin" in capsys.readouterr().err
