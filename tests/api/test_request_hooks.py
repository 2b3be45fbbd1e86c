"""The request hooks (api/request_hooks.py): watches first and always ended, the
first gate's answer wins, finishers see every response; and the server's own parts
on them (a request answered by a gate is counted in flight like any other)."""
from __future__ import annotations

from typing import Any

import trio
from quart import Request, Response, g, request
from quart_trio import QuartTrio

from api.errors import ApiError
from api.request_hooks import request_hooks, unproxied
from api.cors import install_cors
from api.shutdown import install_closing

from .test_cors import PREFLIGHT


def hooked_app() -> tuple[QuartTrio, list[Any]]:
    app = QuartTrio("hooks")
    seen: list[Any] = []
    hooks = request_hooks(app)
    assert request_hooks(app) is hooks  # installed once
    hooks.watch.append(lambda req: seen.append(("watch", req.path)))
    hooks.end.append(lambda: seen.append("end"))

    def gate(req: Request) -> Any:
        if req.path == "/gated":
            return Response("from the gate", status=202)
        if req.path == "/refused":
            raise ApiError(403, "Forbidden", "refused by a gate")
        return None

    def second_gate(req: Request) -> None:
        seen.append(("second gate", req.path))

    def finish(req: Request, response: Response, seconds: float) -> None:
        seen.append(("finish", req.path, response.status_code, seconds >= 0))
        response.headers["X-Finished"] = "yes"

    hooks.gate.extend([gate, second_gate])
    hooks.finish.append(finish)

    @app.errorhandler(ApiError)
    async def on_error(exc: ApiError) -> Any:
        return {"error": exc.details}, exc.status

    @app.get("/route")
    async def route() -> Any:
        seen.append("route")
        assert unproxied(request).path == "/route" and unproxied(g) is not g
        return "from the route"

    @app.get("/gated")
    async def never() -> Any:
        raise AssertionError("a gate answered: no route runs")

    return app, seen


async def test_the_hooks_run_in_their_order_around_a_route_a_gate_and_an_error() -> None:
    app, seen = hooked_app()
    client = app.test_client()
    response = await client.get("/route")
    assert await response.get_data(as_text=True) == "from the route"
    assert response.headers["X-Finished"] == "yes"
    assert seen == [("watch", "/route"), ("second gate", "/route"), "route",
                    ("finish", "/route", 200, True), "end"]
    seen.clear()
    response = await client.get("/gated")
    assert response.status_code == 202 and response.headers["X-Finished"] == "yes"
    assert seen == [("watch", "/gated"), ("finish", "/gated", 202, True), "end"]
    seen.clear()
    response = await client.get("/refused")
    assert response.status_code == 403 and response.headers["X-Finished"] == "yes"
    assert seen == [("watch", "/refused"), ("finish", "/refused", 403, True), "end"]
    seen.clear()
    response = await client.get("/nowhere")
    assert response.status_code == 404
    assert seen == [("watch", "/nowhere"), ("second gate", "/nowhere"),
                    ("finish", "/nowhere", 404, True), "end"]


async def test_a_request_a_gate_answers_is_counted_in_flight_and_uncounted() -> None:
    # A CORS preflight is answered by a gate. It was once uncounted at teardown
    # without having been counted, so while another request was in flight the
    # count read 0, and a shutdown would have taken the busy server for idle.
    app = QuartTrio("counted")
    install_cors(app, ["https://app.example"])  # first, as create_app installs them
    closing = install_closing(app)
    release, answered = trio.Event(), trio.Event()

    @app.get("/slow")
    async def slow() -> Any:
        await release.wait()
        return "done"

    client = app.test_client()

    async def slow_request() -> None:
        assert (await client.get("/slow")).status_code == 200
        answered.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_request)
        while closing.in_flight == 0:
            await trio.sleep(0.01)
        assert (await client.options("/slow", headers=PREFLIGHT)).status_code == 204
        assert closing.in_flight == 1
        release.set()
        await answered.wait()
    assert closing.in_flight == 0
