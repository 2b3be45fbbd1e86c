"""The JavaScript SDK in a real browser (headless Chromium), against the session's
live server: the reference's snippet verbatim, as a page's module script that
imports 'neurogrid-js' through an import map, and a streamed task.

The page and the SDK's files are handed to the browser by Playwright's request
routing under the live server's origin (as the server would serve a page of its
own); every API call goes to the live server itself."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.live_server import LiveServer

SDK = Path(__file__).resolve().parents[2] / "sdk" / "js" / "src"

# The reference's snippet, verbatim (neurogrid-api-reference.txt, "JavaScript SDK").
SNIPPET = """import { NeuroGrid } from 'neurogrid-js';
const client = new NeuroGrid();
const result = await client.submitTask({ prompt: 'Hello world', model: 'llama2' });
console.log(await result.getResponse());
"""

PAGE = f"""<!doctype html>
<html><head><meta charset="utf-8">
<script type="importmap">{json.dumps({"imports": {"neurogrid-js": "/__sdk/index.js"}})}</script>
<script type="module">
{SNIPPET}</script>
</head><body></body></html>
"""


def serve_sdk(page: Any, origin: str) -> None:
    """Answer /__sdk/* with the SDK's source files and the test page."""

    def answer(route: Any) -> None:
        name = route.request.url.split("/__sdk/", 1)[1]
        if name == "page.html":
            route.fulfill(status=200, content_type="text/html", body=PAGE)
        elif "/" not in name and (SDK / name).is_file():
            route.fulfill(status=200, content_type="text/javascript",
                          body=(SDK / name).read_text(encoding="utf-8"))
        else:
            route.fulfill(status=404, body="not in the SDK")

    page.route(f"{origin}/__sdk/**", answer)


def test_the_reference_snippet_runs_verbatim_in_a_browser(live: LiveServer, browser: Any) -> None:
    page = browser.new_page()
    errors: list[str] = []
    printed: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda message: printed.append(message.text))
    serve_sdk(page, live.url)
    page.goto(f"{live.url}/__sdk/page.html")
    deadline = 60_000
    step = 100
    while not printed and not errors and deadline > 0:
        page.wait_for_timeout(step)
        deadline -= step
    assert not errors, errors
    assert printed, "the snippet printed nothing within 60 s"
    # what it printed is the result of the task it submitted (the newest of its caller)
    tasks = httpx.get(f"{live.url}/api/tasks", params={"limit": 1}).json()["tasks"]
    assert tasks and tasks[0]["status"] == "completed"
    assert printed[0] == tasks[0]["result"]
    page.close()


def test_a_streamed_task_in_a_browser_assembles_its_result(live: LiveServer, browser: Any) -> None:
    page = browser.new_page()
    serve_sdk(page, live.url)
    page.goto(f"{live.url}/__sdk/none.html")  # a page of the server's origin (a 404 is fine)
    outcome = page.evaluate("""async () => {
        const { NeuroGrid } = await import('/__sdk/index.js');
        const client = new NeuroGrid();
        const task = await client.submitTask({ prompt: 'Stream me', model: 'llama2', maxTokens: 12 });
        const tokens = [];
        for await (const token of task.stream()) tokens.push(token);
        return { id: task.taskId, text: tokens.join(''), response: await task.getResponse() };
    }""")
    stored = httpx.get(f"{live.url}/api/tasks/{outcome['id']}").json()["task"]
    assert stored.get("status") == "completed", (outcome, stored)
    assert outcome["response"] == stored["result"]
    assert outcome["text"] == stored["result"]
    page.close()
