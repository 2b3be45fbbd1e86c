"""The dashboard's server side: the page and its assets, the dashboard view, and
nodes that left listed as offline by /api/network/status."""
from __future__ import annotations

import trio

from .conftest import Harness, fake_worker, wait_for_status


async def test_the_page_and_its_assets_are_served_locally(api: Harness) -> None:
    response = await api.client.get("/")
    assert response.status_code == 200 and response.content_type.startswith("text/html")
    html = (await response.get_data()).decode()
    assert 'src="/assets/dashboard.js"' in html and 'href="/assets/dashboard.css"' in html
    assert "http://" not in html and "https://" not in html  # no CDN
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css"),
                       ("docs.js", "text/javascript")):
        asset = await api.client.get(f"/assets/{name}")
        assert asset.status_code == 200 and asset.content_type.startswith(kind)
    for name in ("nothing.js", "..%2Fapp.py", "dashboard.html"):
        assert (await api.client.get(f"/assets/{name}")).status_code == 404
    docs = await api.client.get("/docs")
    assert docs.status_code == 200 and b"/assets/docs.js" in await docs.get_data()


async def test_a_node_that_left_is_listed_offline(api: Harness) -> None:
    async with fake_worker(api, name="gone", location="Japan") as worker:
        task_id = (await api.submit())["task_id"]
        await worker.next_assign()
        await worker.finish(task_id, "hi")
        await wait_for_status(api, task_id, "completed")
        status = await (await api.client.get("/api/network/status")).get_json()
        assert [(n["id"], n["status"]) for n in status["nodes"]] == [("node_gone", "online")]
    for _ in range(200):  # the coordinator notices the closed socket
        if not api.services.coordinator.snapshot().nodes:
            break
        await trio.sleep(0.01)
    status = await (await api.client.get("/api/network/status")).get_json()
    assert status["network"]["nodes_online"] == 0
    (node,) = status["nodes"]
    assert (node["id"], node["status"], node["location"], node["tasks_processed"]) == (
        "node_gone", "offline", "Japan", 1)
    assert node["running"] == 0 and node["last_seen"].endswith("Z")
    assert status["network"]["success_rate"] == 100
    assert isinstance(status["network"]["success_rate"], int)


async def test_the_dashboard_view_shows_queue_recent_tasks_and_cost(api: Harness) -> None:
    async with fake_worker(api, name="dash") as worker:
        first = (await api.submit())["task_id"]
        await worker.next_assign()
        api.clock.now += 3.0
        await worker.finish(first, "done", seconds=2.0)
        await wait_for_status(api, first, "completed")
        await api.submit({"prompt": "busy"})  # runs on the only slot
        await worker.next_assign()
        await api.submit({"prompt": "waits", "priority": "high"})
        view = await (await api.client.get("/api/network/dashboard")).get_json()
    assert view["queue"] == {"llama2:7b": {"high": 1}}
    assert view["queued_by_model"]["llama2:7b"] == 1
    (recent,) = view["recent"]
    assert (recent["id"], recent["status"], recent["node"], recent["seconds"]) == (
        first, "completed", "node_dash", 3.0)
    assert recent["cost"] > 0 and recent["openai_cost"] > 0
    assert len(view["minutes"]) == 60 and view["minutes"][-1]["completed"] == 1
    assert view["minutes"][-1]["p50"] == 3.0 and view["hour"]["completed"] == 1
    assert view["cost"]["total_usd"] == recent["cost"]
    assert [n["status"] for n in view["nodes"]] == ["online"]
