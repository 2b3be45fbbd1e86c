# The HTTP endpoints. Each route translates a request into store and coordinator
# calls and a response into the reference's JSON shape (views.py); no scheduling
# logic lives here.
#
# Rules:
# - Order of checks on a task call: who is calling (401), is the request valid
#   (400), may they (429), then act. A refused request writes nothing.
# - A task is committed to the store before its id is returned, and before the
#   coordinator sees it (the dispatcher hands it over after the answer), so an
#   update about it always finds its row.
# - A task is visible (read, cancel, stream) to the key that created it; anonymous
#   tasks to anyone who has the id. Another key's task answers 404, as an unknown
#   one does, so ids cannot be probed.
# - Every answer is JSON (the SSE stream excepted), errors in the reference's
#   error object; task calls carry X-RateLimit-* headers.
from __future__ import annotations

import base64
import math

import json
from typing import Any, AsyncIterator

import trio
from quart import (
    Blueprint, Quart, Request, Response, current_app, g, has_websocket_context, jsonify, request,
    websocket,
)
from quart.blueprints import BlueprintSetupState
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, RequestTimeout

from engine.core import MODELS
from engine.core.catalog import GPU_CLASSES, REFERENCE_GPU, default_price, gpu_rate

from . import views
from .access import Admission, AuthError, Caller, client_address as peer_client, identify
from .errors import ApiError
from .media import IMAGE_BLOB
from .network_watch import WATCH_KEY
from .nodes_ws import serve_worker_socket
from .openapi import openapi_document
from .request_hooks import request_hooks, unproxied
from .services import Services, process_memory, service_failure
from .store import OPEN_STATES, Signup, StoreFailed, StoreUnavailable, TaskRow
from .submission import (
    IDEMPOTENCY_HEADER, REPLAYED_HEADER, create_task, idempotency_key, new_id,
)
from .validation import (
    MAX_BODY_BYTES, MAX_TASK_BODY_BYTES, MAX_UPLOAD_BYTES, InvalidRequest, parse_form_task,
    parse_json_object, parse_page, parse_signup,
)

api_routes = Blueprint("neurogrid", __name__)
SSE_KEEPALIVE_SECONDS = 15.0


def services() -> Services:
    found: Services = unproxied(current_app).extensions["neurogrid"]
    return found


# What `jsonify` writes (compact separators, ASCII, keys in order, a final newline),
# for the hot path: one encoder, no provider lookups through the app proxy.
_ENCODE_JSON = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


def host_url() -> str:
    """The request's scheme and host (views.task_view asks only for a served file)."""
    return request.host_url


def json_response(body: dict[str, Any]) -> Response:
    return Response(_ENCODE_JSON(body) + "\n", mimetype="application/json")


def error_response(status: int, error: str, details: str,
                   headers: dict[str, str] | None = None) -> tuple[Response, int, dict[str, str]]:
    body = views.error_body(error, details, services().now())
    return jsonify(body), status, headers or {}


@api_routes.app_errorhandler(ApiError)
async def on_api_error(exc: ApiError):  # type: ignore[no-untyped-def]
    return error_response(exc.status, exc.error, exc.details, exc.headers)


@api_routes.app_errorhandler(InvalidRequest)
async def on_invalid(exc: InvalidRequest):  # type: ignore[no-untyped-def]
    return error_response(400, "Invalid request parameters", exc.details)


@api_routes.app_errorhandler(AuthError)
async def on_auth_error(exc: AuthError):  # type: ignore[no-untyped-def]
    return error_response(401, "Unauthorized", str(exc), {"WWW-Authenticate": "Bearer"})


@api_routes.app_errorhandler(RequestEntityTooLarge)
async def on_too_large(exc: RequestEntityTooLarge):  # type: ignore[no-untyped-def]
    return error_response(400, "Invalid request parameters",
                          f"the body is larger than the limit of {MAX_BODY_BYTES} bytes")


STORE_RETRY_SECONDS = 5  # Retry-After of a 503 while the database cannot be written


@api_routes.app_errorhandler(StoreUnavailable)
async def on_store_unavailable(exc: StoreUnavailable):  # type: ignore[no-untyped-def]
    return error_response(503, "Service unavailable", str(exc),
                          {"Retry-After": str(STORE_RETRY_SECONDS)})


@api_routes.app_errorhandler(StoreFailed)
async def on_store_failed(exc: StoreFailed):  # type: ignore[no-untyped-def]
    return error_response(503, "Service unavailable",
                          f"{exc}; the server is stopping to be restarted",
                          {"Retry-After": str(STORE_RETRY_SECONDS)})


@api_routes.app_errorhandler(HTTPException)
async def on_http_error(exc: HTTPException):  # type: ignore[no-untyped-def]
    # the exception's own headers (Allow of a 405, WWW-Authenticate of a 401), not its HTML type
    headers = {name: value for name, value in exc.get_headers()
               if name.lower() != "content-type"}
    return error_response(exc.code or 500, exc.name, exc.description or exc.name, headers)


@api_routes.app_errorhandler(Exception)
async def on_unexpected(exc: Exception):  # type: ignore[no-untyped-def]
    # a websocket route has no `request`: reading it here would raise and mask `exc`
    where = (f"websocket {websocket.path}" if has_websocket_context()
             else f"{request.method} {request.path}")
    current_app.logger.exception("unexpected error in %s", where, exc_info=exc)
    return error_response(500, "Internal server error",
                          "the server failed to answer this request; it has been logged")


def refuse_when_failed(req: Request) -> None:
    """A request hook: refuse every request once the services have failed (503)."""
    reason = service_failure(unproxied(current_app)).reason
    if reason is not None:
        raise ApiError(503, "Service unavailable",
                       f"{reason}; the server is stopping to be restarted",
                       {"Retry-After": str(STORE_RETRY_SECONDS)})


def add_rate_limit_headers(req: Request, response: Response, seconds: float) -> None:
    """A request hook: the caller's budget after the request, in X-RateLimit-*:
    what a submission left (`g.admission`), else, for any call whose caller is
    known, the budget as it stands (peeked here, not when the caller was
    identified: a submission's own admission replaces it)."""
    found = unproxied(g)
    admission: Admission | None = found.get("admission")
    if admission is None:
        caller: Caller | None = found.get("caller")
        if caller is None:
            return
        s = services()
        admission = s.limiter.peek(caller, s.now())
    for name, value in admission.headers().items():
        response.headers.setdefault(name, value)


@api_routes.record_once
def install_hooks(state: BlueprintSetupState) -> None:
    app = state.app
    assert isinstance(app, Quart)
    hooks = request_hooks(app)
    hooks.gate.append(refuse_when_failed)
    hooks.finish.append(add_rate_limit_headers)


# ---- callers and bodies -------------------------------------------------------


def client_address() -> str:
    req = unproxied(request)
    return peer_client(req.remote_addr or "unknown", req.headers.getlist("X-Forwarded-For"),
                       services().config.trusted_proxies)


async def current_caller() -> Caller:
    """The request's caller (AuthError: 401); its budget goes in the answer's
    X-RateLimit-* headers (add_rate_limit_headers). The client's address names
    only an anonymous caller, so it is worked out only for a request with no key."""
    s = services()
    authorization = unproxied(request).headers.get("Authorization")
    caller = await identify(authorization, "" if authorization else client_address(), s.store,
                            s.config.auth_required, s.config.tiers)
    unproxied(g).caller = caller
    return caller


async def request_body() -> bytes:
    """The request's body, as `request.get_data(cache=False)` reads it (RequestTimeout,
    a 408, when it has not arrived within the body timeout; RequestEntityTooLarge
    past MAX_CONTENT_LENGTH), without a
    trip through the scheduler when it is in already, as a small body is (it comes
    with the headers): get_data awaits the body's completion event, a checkpoint
    even when that is set, where iterating the body takes what is there."""
    req = unproxied(request)
    timeout = req.body_timeout
    with trio.move_on_after(math.inf if timeout is None else timeout) as waited:
        chunks = [chunk async for chunk in req.body]
    if waited.cancelled_caught:
        raise RequestTimeout()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def task_body() -> dict[str, Any]:
    """A submission's fields: a JSON object, or a multipart/form-data form whose
    `file` part is the task's input file (its audio). Bodies that carry a file may be
    up to MAX_TASK_BODY_BYTES; others are held to MAX_BODY_BYTES."""
    req = unproxied(request)
    if req.content_length is not None and req.content_length > MAX_TASK_BODY_BYTES:
        raise InvalidRequest(f"the body is {req.content_length} bytes; "
                             f"the limit is {MAX_TASK_BODY_BYTES}")
    if req.mimetype == "multipart/form-data":
        form, files = await req.form, await req.files
        body = parse_form_task(form.to_dict())
        upload = files.get("file")
        if upload is not None:
            body["audio"] = base64.b64encode(upload.read(MAX_UPLOAD_BYTES + 1)).decode("ascii")
        return body
    data = await request_body()
    body = parse_json_object(data, MAX_TASK_BODY_BYTES)
    if len(data) > MAX_BODY_BYTES and "audio" not in body:
        raise InvalidRequest(f"the body is {len(data)} bytes; the limit is {MAX_BODY_BYTES} "
                             "(up to a larger limit when it carries an 'audio' file)")
    return body


async def json_body() -> dict[str, Any]:
    length = unproxied(request).content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise InvalidRequest(f"the body is {length} bytes; the limit is {MAX_BODY_BYTES}")
    return parse_json_object(await request_body())


async def visible_task(caller: Caller, task_id: str) -> TaskRow:
    row = await services().store.get_task(task_id)
    if row is None or not (row.owner.startswith("anon:") or row.owner == caller.owner):
        raise ApiError(404, "Not found", f"no task {task_id[:100]!r}")
    return row


# ---- tasks --------------------------------------------------------------------


@api_routes.post("/api/tasks")
async def submit_task():  # type: ignore[no-untyped-def]
    caller = await current_caller()
    key = idempotency_key(unproxied(request).headers.get(IDEMPOTENCY_HEADER))
    created = await create_task(services(), caller, await task_body(), idempotency_key=key)
    if created.admission is not None:
        unproxied(g).admission = created.admission
    quote = created.quote
    body = views.task_created(created.row, quote.node_id, quote.location or quote.region or None,
                              quote.gpu, quote.savings_pct)
    response = json_response(body)
    if created.replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return response


@api_routes.get("/api/tasks/<task_id>")
async def get_task(task_id: str):  # type: ignore[no-untyped-def]
    row = await visible_task(await current_caller(), task_id)
    return json_response({"success": True, "task": views.task_view(row, host_url)})


@api_routes.get(f"/api/tasks/<task_id>/{IMAGE_BLOB}")
async def get_task_image(task_id: str):  # type: ignore[no-untyped-def]
    """The image a task produced; the same access rules as the task itself."""
    row = await visible_task(await current_caller(), task_id)
    blob = await services().store.get_blob(row.id, IMAGE_BLOB)
    if blob is None:
        raise ApiError(404, "Not found", f"task {task_id[:100]!r} has no image"
                       + ("" if row.status == "completed" else f" (it is {row.status})"))
    return Response(blob.data, status=200, content_type=blob.content_type,
                    headers={"Cache-Control": "private, max-age=86400"})


@api_routes.delete("/api/tasks/<task_id>")
async def cancel_task(task_id: str):  # type: ignore[no-untyped-def]
    s = services()
    row = await visible_task(await current_caller(), task_id)
    if row.status in OPEN_STATES:
        assert s.intake is not None
        if await s.intake.cancel(task_id, s.now()):  # written by the relay's update writer
            await s.store.barrier()
            row = await s.store.get_task(task_id) or row
            return jsonify({"success": True, "message": "Task cancelled",
                            "task": views.task_view(row, host_url)})
        await s.store.barrier()  # it ended meanwhile: its final update is on its way
        row = await s.store.get_task(task_id) or row
    raise ApiError(409, "Task already finished",
                   f"task {task_id} is {row.status} and can no longer be cancelled")


@api_routes.get("/api/tasks")
async def list_tasks():  # type: ignore[no-untyped-def]
    s = services()
    caller = await current_caller()
    page = parse_page(request.args)
    rows = await s.store.list_tasks(caller.owner, page.limit + 1, page.cursor, page.status)
    more = len(rows) > page.limit
    rows = rows[:page.limit]
    return jsonify({
        "success": True,
        "tasks": [views.task_view(r, host_url) for r in rows],
        "count": len(rows),
        "next_cursor": str(rows[-1].seq) if more else None,
    })


def sse(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


@api_routes.get("/api/tasks/<task_id>/stream")
async def stream_task(task_id: str):  # type: ignore[no-untyped-def]
    s = services()
    await visible_task(await current_caller(), task_id)
    base_url = request.host_url  # the generator runs outside the request context

    async def events() -> AsyncIterator[bytes]:
        with s.feed.subscribe(task_id) as receive:
            # The writer publishes a task's end right after queueing its commit: an end
            # published before this subscription must be read from the store, so wait
            # for what is queued (else the row may still read open, and nothing comes).
            await s.store.barrier()
            row = await s.store.get_task(task_id)
            assert row is not None
            yield sse("status", {"status": row.status})
            if row.status in OPEN_STATES:
                while True:
                    event = None
                    with trio.move_on_after(SSE_KEEPALIVE_SECONDS):
                        try:
                            event = await receive.receive()
                        except trio.EndOfChannel:
                            break
                    yield sse(*event) if event is not None else b": keep-alive\n\n"
        await s.store.barrier()  # the final change is committed: read it
        final = await s.store.get_task(task_id)
        assert final is not None
        yield sse("done", views.task_view(final, base_url))

    response = Response(events(), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache"})
    response.timeout = None
    return response


# ---- beta, network, health, models --------------------------------------------


@api_routes.post("/api/beta/signup")
async def beta_signup():  # type: ignore[no-untyped-def]
    s = services()
    signup = parse_signup(await json_body())
    now = s.now()
    stored, created = await s.store.add_signup(
        Signup(new_id("beta", now), signup.email, signup.type, signup.source, now))
    message = ("Successfully joined NeuroGrid Beta!" if created
               else "You are already on the NeuroGrid Beta list")
    return jsonify({
        "success": True,
        "message": message,
        "signup_id": stored.id,
        "bonuses": views.SIGNUP_BONUSES,
        "next_steps": views.SIGNUP_NEXT_STEPS,
        "already_registered": not created,
    })


@api_routes.get("/api/network/status")
async def network_status():  # type: ignore[no-untyped-def]
    s = services()
    now = s.now()
    snapshot = s.coordinator.snapshot()
    offline = current_app.extensions[WATCH_KEY].look(snapshot, now)  # nodes that left
    return jsonify(views.network_status(snapshot, await s.store.stats(), await s.store.nodes(),
                                        await s.store.availability(now, s.run_id), now, offline))


@api_routes.get("/health")
async def health():  # type: ignore[no-untyped-def]
    s = services()
    now = s.now()
    rss, total = process_memory()
    store = await s.store.health()
    body = views.health(s.version, s.config.environment, now - s.started_at, rss, total,
                        s.coordinator.snapshot(), await s.health_stats(store.degraded), now,
                        store)
    return jsonify(body), 503 if store.degraded else 200


@api_routes.get("/api/models")
async def list_models():  # type: ignore[no-untyped-def]
    coordinator = services().coordinator
    snapshot, weights = coordinator.snapshot(), coordinator.node_weights()
    models = []
    for name, model in MODELS.items():
        serving = [n for n in snapshot.nodes if name in n.models and not n.draining]
        # The cheapest work unit on offer now (at a node's measured speed and price
        # when it has been measured: engine/core/speed.py); with no node online, the
        # reference GPU.
        offers = [views.unit_offer(n, name) for n in serving]
        per_unit, gpu = min(offers) if offers else (
            default_price(REFERENCE_GPU) / 3600 / gpu_rate(REFERENCE_GPU, name), REFERENCE_GPU)
        models.append({
            "id": name,
            "aliases": list(model.aliases),
            "description": model.description,
            "task_type": model.task_type,
            # what the online nodes really run for it; a stand-in says so
            "weights": sorted({weights[n.node_id][name] for n in serving
                               if name in weights.get(n.node_id, {})}),
            "available": bool(serving),
            "nodes_online": len(serving),
            "queued_tasks": snapshot.queued_by_model.get(name, 0),
            "pricing": {
                "unit": model.work_unit,
                "per_unit_usd": per_unit,
                "per_1000_units": views.dollars(per_unit * 1000),
                "gpu": gpu,
                "openai_reference": model.openai_reference,
            },
        })
    return jsonify({"success": True, "models": models,
                    "gpu_classes": {g.name: {"vram_gb": g.vram_gb,
                                             "price_per_hour": g.price_per_hour}
                                    for g in GPU_CLASSES.values()}})


@api_routes.get("/openapi.json")
async def openapi():  # type: ignore[no-untyped-def]
    return jsonify(openapi_document(services().version))


@api_routes.websocket("/api/nodes/connect")
async def nodes_connect() -> None:
    await serve_worker_socket(services().coordinator)

