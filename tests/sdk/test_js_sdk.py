"""The JavaScript SDK (sdk/js, package neurogrid-js): pytest runs its `node --test`
files, the live ones against the session's server (NEUROGRID_BASE_URL), so that
`pytest` alone runs everything. Skipped where `node` is absent."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

JS = Path(__file__).resolve().parents[2] / "sdk" / "js"
NODE = shutil.which("node")
NODE_SECONDS = 300

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed: the JavaScript "
                                "SDK's tests need Node 20+")


def node_test(path: Path, base_url: str | None, api_key: str | None = None) -> None:
    assert NODE is not None
    env = {k: v for k, v in os.environ.items()
           if k not in ("NEUROGRID_BASE_URL", "NEUROGRID_API_KEY")}
    if base_url is not None:
        env["NEUROGRID_BASE_URL"] = base_url
    if api_key is not None:
        env["NEUROGRID_API_KEY"] = api_key
    run = subprocess.run([NODE, "--test", "--test-reporter=tap", str(path)], cwd=JS, env=env,
                         capture_output=True, text=True, timeout=NODE_SECONDS)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    assert "# fail 0" in report and "# pass 0" not in report, report
    assert "# skipped 0" in report, report  # a live test skipped would be a test not run


def test_the_js_sdk_against_the_live_server(live_server: str) -> None:
    node_test(JS / "test" / "live.test.js", live_server)


def test_the_openai_npm_package_against_the_v1_routes(live_server: str,
                                                      live_server_key: str) -> None:
    if not (JS / "node_modules" / "openai").exists():
        pytest.skip("the openai npm package (a devDependency) is not installed: run `npm ci` "
                    "in sdk/js")
    node_test(JS / "test" / "openai.test.js", live_server, live_server_key)


def test_the_js_sdk_retries_downloads_and_bodies() -> None:
    node_test(JS / "test" / "stub.test.js", None)


def test_the_reference_snippet_and_the_surface_type_check_against_index_d_ts() -> None:
    tsc = JS / "node_modules" / "typescript" / "bin" / "tsc"
    if not tsc.exists():
        pytest.skip("typescript (a devDependency) is not installed: run `npm ci` in sdk/js")
    assert NODE is not None
    run = subprocess.run([NODE, str(tsc), "-p", "tsconfig.json"], cwd=JS, capture_output=True,
                         text=True, timeout=NODE_SECONDS)
    assert run.returncode == 0, run.stdout + run.stderr
