"""Beta signup, network status, health, models, OpenAPI and the worker endpoint."""
from __future__ import annotations

import json
import re

import pytest

from api.openapi import PATHS

from .conftest import Harness, fake_worker, wait_for_status

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
DOLLARS = re.compile(r"^\$\d+\.\d+$")


async def test_beta_signup_answers_the_reference_shape(api: Harness) -> None:
    response = await api.client.post("/api/beta/signup", json={
        "email": "developer@example.com", "type": "developer", "source": "website"})
    assert response.status_code == 200
    body = await response.get_json()
    assert body["success"] is True
    assert body["message"] == "Successfully joined NeuroGrid Beta!"
    assert re.fullmatch(rf"beta_{int(api.clock.now)}_[a-z0-9]+", body["signup_id"])
    assert body["bonuses"] == {"free_tasks": 1000, "lifetime_discount": 15,
                               "priority_support": True, "early_access": True}
    assert len(body["next_steps"]) == 3 and all(isinstance(s, str) for s in body["next_steps"])


async def test_a_duplicate_email_gets_its_earlier_signup(api: Harness) -> None:
    first = await (await api.client.post("/api/beta/signup",
                                         json={"email": "Dev@Example.com"})).get_json()
    again = await api.client.post("/api/beta/signup",
                                  json={"email": "dev@example.com", "type": "researcher"})
    assert again.status_code == 200
    body = await again.get_json()
    assert body["signup_id"] == first["signup_id"] and body["already_registered"] is True
    assert (await api.services.store.stats()).beta_signups == 1


@pytest.mark.parametrize(("body", "details"), [
    ({}, "'email' field is required"),
    ({"email": "not-an-email"}, "valid email"),
    ({"email": "a@b"}, "valid email"),
    ({"email": "a b@example.com"}, "valid email"),
    ({"email": 5}, "must be a string"),
    ({"email": "a@example.com", "type": "investor"}, "'type' field must be one of"),
    ({"email": "a@example.com", "source": "Hacker News!"}, "'source' field"),
    ({"email": "a@example.com", "ref": "x"}, "unknown field 'ref'"),
])
async def test_bad_signups_are_400(api: Harness, body: dict, details: str) -> None:
    response = await api.client.post("/api/beta/signup", json=body)
    assert response.status_code == 400
    assert details in (await response.get_json())["details"]
    assert (await api.services.store.stats()).beta_signups == 0


async def test_network_status_is_live(api: Harness) -> None:
    status = await (await api.client.get("/api/network/status")).get_json()
    assert status["success"] is True and ISO.match(status["timestamp"])
    assert status["network"]["nodes_online"] == 0 and status["nodes"] == []
    await api.client.post("/api/beta/signup", json={"email": "x@example.com"})
    async with fake_worker(api, name="de", location="Germany") as worker:
        task_id = (await api.submit())["task_id"]
        await worker.next_assign()
        await worker.finish(task_id, "hi", tokens=100, seconds=2.0)
        await wait_for_status(api, task_id, "completed")
        await api.submit()
        status = await (await api.client.get("/api/network/status")).get_json()
    network = status["network"]
    assert network["nodes_online"] == 1
    assert network["total_tasks"] == 2 and network["completed_tasks"] == 1
    assert network["success_rate"] == 100.0
    assert re.fullmatch(r"\d+\.\ds", network["avg_response_time"])
    assert re.fullmatch(r"-?\d+\.\d%", network["cost_savings_vs_openai"])
    assert network["uptime"] == "100.0%"
    node = status["nodes"][0]
    assert (node["id"], node["location"], node["status"], node["gpu"], node["tasks_processed"]) \
        == ("node_de", "Germany", "online", "RTX 4090", 1)
    assert status["stats"]["beta_signups"] == 1
    assert status["stats"]["total_compute_time"] == "2s"
    assert DOLLARS.match(status["stats"]["total_savings"])


async def test_health_reports_uptime_memory_and_network(api: Harness) -> None:
    api.clock.now += 90_061
    response = await api.client.get("/health")
    body = await response.get_json()
    assert body["status"] == "OK" and body["service"] == "NeuroGrid"
    assert isinstance(body["version"], str) and body["environment"] == "development"
    assert ISO.match(body["timestamp"])
    assert body["uptime"] == 90_061 and body["uptime_human"] == "25h 1m"
    assert re.fullmatch(r"\d+MB", body["memory"]["used"])
    assert 10 * 2**20 < body["memory"]["used_bytes"] < body["memory"]["total_bytes"]
    network = body["network"]
    assert (network["nodes_online"], network["total_tasks"], network["beta_signups"]) == (0, 0, 0)


async def test_models_show_what_is_served_now(api: Harness) -> None:
    body = await (await api.client.get("/api/models")).get_json()
    by_id = {m["id"]: m for m in body["models"]}
    assert set(by_id) == {"llama2:7b", "stable-diffusion", "whisper"}
    assert not by_id["llama2:7b"]["available"]
    assert by_id["llama2:7b"]["pricing"]["unit"] == "token"
    async with fake_worker(api):
        body = await (await api.client.get("/api/models")).get_json()
    by_id = {m["id"]: m for m in body["models"]}
    assert by_id["llama2:7b"]["available"] and by_id["llama2:7b"]["nodes_online"] == 1
    assert not by_id["whisper"]["available"]


async def test_openapi_describes_every_route(api: Harness) -> None:
    document = await (await api.client.get("/openapi.json")).get_json()
    assert document["openapi"].startswith("3.")
    app = api.test_app.app
    routes = {re.sub(r"<(\w+)>", r"{\1}", rule.rule) for rule in app.url_map.iter_rules()
              if rule.endpoint != "static"}
    assert routes == set(document["paths"]) == set(PATHS)
    assert document["components"]["schemas"]["TaskRequest"]["properties"]["prompt"]["maxLength"]


async def test_unknown_routes_and_methods_answer_json(api: Harness) -> None:
    for method, path, status in (("get", "/api/nothing", 404), ("put", "/api/tasks", 405)):
        response = await getattr(api.client, method)(path)
        assert response.status_code == status
        assert (await response.get_json())["success"] is False


async def test_a_worker_with_a_bad_token_is_refused(api: Harness) -> None:
    hello = {"type": "hello", "protocol": 1, "token": "ngw_wrong", "name": "x",
             "location": "", "gpu": {"name": "RTX 4090", "vram_gb": 24}, "models": ["llama2:7b"],
             "slots": 1}
    async with api.client.websocket("/api/nodes/connect") as ws:
        await ws.send(json.dumps(hello))
        frame = json.loads(await ws.receive())
    assert frame["type"] == "error"
    assert api.services.coordinator.snapshot().nodes == ()
