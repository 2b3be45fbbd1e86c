# The OpenAI-compatible API under /v1, for clients written against OpenAI's
# libraries (point them at base_url=http://HOST:PORT/v1, the API key as usual):
#
#   GET  /v1/models, /v1/models/<id>   the catalog's models and aliases
#   POST /v1/chat/completions          chat (stream: true for server-sent events)
#   POST /v1/completions               plain completion (idem)
#   POST /v1/images/generations        one image; response_format url | b64_json
#   POST /v1/audio/transcriptions      multipart `file` + `model`; json | text
#
# Theory of operation: every POST is a NeuroGrid task underneath. The request is
# translated into a task body (openai_schema.py), submitted through
# submission.create_task (the same parse, admission, quote and insert as
# POST /api/tasks: it shows in GET /api/tasks, is priced, placed and rate-limited
# the same way, and honours `Idempotency-Key`), and the answer waits for the task's
# end the way the SSE route does: subscribe to the TaskFeed, read the row, follow
# progress events until the feed closes the channel, then (after the store's
# barrier) read the final row. A streamed answer turns each progress event's
# tokens into a chunk; the text the feed missed (a slow reader's dropped events)
# is sent from the final row, so the chunks always assemble to the task's result.
#
# Rules:
# - Order of checks as everywhere: who is calling (401), is the request valid
#   (400), may they (429), then act.
# - Errors on these routes only, in OpenAI's shape {"error": {"message", "type",
#   "param", "code"}}: invalid_request_error (400, 404 for an unknown route,
#   409 for a reused idempotency key), authentication_error (401),
#   not_found_error (404: an unknown model), rate_limit_error (429 with
#   Retry-After), server_error (a task that failed, expired or was refused; 500).
#   The rest of the API keeps the reference's error object.
# - Under /v1, a path or method with no route is answered in OpenAI's shape too
#   (an app-wide handler of NotFound and MethodNotAllowed that leaves the rest of
#   the API its reference error object).
# - Answers carry `X-NeuroGrid-Task-Id` (the task underneath), and
#   `Idempotent-Replayed: true` when they repeat an earlier request's task.
from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from typing import Any, AsyncIterator, Callable, Mapping

import trio
from quart import Blueprint, Response, g, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from .access import AuthError
from .errors import ApiError
from .media import IMAGE_BLOB, image_path
from .openai_schema import (
    OpenAIError, StopScanner, TextRequest, apply_stops, chat_chunk, chat_completion,
    finish_reason, image_body, invalid, model_list, model_object, parse_chat, parse_completion,
    parse_image, parse_transcription, text_chunk, text_completion, usage,
)
from .routes import SSE_KEEPALIVE_SECONDS, current_caller, error_response, json_body, services
from .services import Services
from .store import OPEN_STATES, TaskRow
from .submission import (
    IDEMPOTENCY_HEADER, REPLAYED_HEADER, Created, create_task, idempotency_key, request_hash,
)
from .validation import MAX_BODY_BYTES, InvalidRequest

__all__ = ["TASK_ID_HEADER", "openai_routes"]

log = logging.getLogger(__name__)
openai_routes = Blueprint("openai", __name__, url_prefix="/v1")
TASK_ID_HEADER = "X-NeuroGrid-Task-Id"
ENDED_STATUS = {"rejected": 503}  # a task's end -> the HTTP status (else 500)
FIELD = re.compile(r"The '([A-Za-z_]+)' field")


def _encode(body: Mapping[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"))


def openai_response(body: Mapping[str, Any], status: int = 200,
                    headers: Mapping[str, str] | None = None) -> Response:
    return Response(_encode(body) + "\n", status=status, mimetype="application/json",
                    headers=dict(headers or {}))


# ---- errors, in OpenAI's shape ----------------------------------------------------


@openai_routes.errorhandler(OpenAIError)
async def on_openai_error(exc: OpenAIError) -> Response:
    return openai_response(exc.body(), exc.status, exc.headers)


@openai_routes.errorhandler(ApiError)
async def on_api_error(exc: ApiError) -> Response:
    code = {409: "idempotency_key_reused", 429: "rate_limit_exceeded"}.get(exc.status)
    return await on_openai_error(OpenAIError(exc.status, exc.details, None, code, exc.headers))


@openai_routes.errorhandler(InvalidRequest)
async def on_invalid(exc: InvalidRequest) -> Response:
    param = IDEMPOTENCY_HEADER if IDEMPOTENCY_HEADER in exc.details else None
    return await on_openai_error(invalid(exc.details, param))


@openai_routes.errorhandler(AuthError)
async def on_auth_error(exc: AuthError) -> Response:
    return await on_openai_error(OpenAIError(401, str(exc), None, "invalid_api_key",
                                             {"WWW-Authenticate": "Bearer"}))


@openai_routes.errorhandler(RequestEntityTooLarge)
async def on_too_large(exc: RequestEntityTooLarge) -> Response:
    return await on_openai_error(OpenAIError(
        413, f"the body is larger than the limit of {MAX_BODY_BYTES} bytes", None,
        "request_too_large"))


@openai_routes.errorhandler(HTTPException)
async def on_http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    return await on_openai_error(OpenAIError(status, exc.description or exc.name))


@openai_routes.errorhandler(Exception)
async def on_unexpected(exc: Exception) -> Response:
    log.exception("unexpected error in %s %s", request.method, request.path)
    return await on_openai_error(OpenAIError(
        500, "the server failed to answer this request; it has been logged"))


# ---- submitting and following a task ---------------------------------------------


async def submit(task: Mapping[str, Any], identity: Mapping[str, Any],
                 params: Mapping[str, str]) -> Created:
    """Submit the task of an OpenAI request (its `identity`: what makes it the
    same request again, for the idempotency key). A task field's error names
    the request parameter it came from (`params`: field -> parameter)."""
    caller = await current_caller()
    key = idempotency_key(request.headers.get(IDEMPOTENCY_HEADER))
    try:
        created = await create_task(services(), caller, task, idempotency_key=key,
                                    body_hash=request_hash(identity, request.path))
    except InvalidRequest as exc:
        match = FIELD.search(exc.details)
        field = match.group(1) if match else None
        raise invalid(exc.details, params.get(field, field) if field else None) from None
    if created.admission is not None:
        g.admission = created.admission
    return created


def answer_headers(created: Created) -> dict[str, str]:
    headers = {TASK_ID_HEADER: created.row.id}
    if created.replayed:
        headers[REPLAYED_HEADER] = "true"
    return headers


async def final_row(s: Services, task_id: str) -> TaskRow:
    """The task's row once its end is committed."""
    await s.store.barrier()
    row = await s.store.get_task(task_id)
    assert row is not None  # tasks are never deleted
    return row


async def wait_for_end(task_id: str) -> TaskRow:
    s = services()
    with s.feed.subscribe(task_id) as receive:  # before reading: no end missed
        # An end published before the subscription is committed by the barrier:
        # without it the row could still read open, and nothing would come.
        await s.store.barrier()
        row = await s.store.get_task(task_id)
        if row is not None and row.status in OPEN_STATES:
            async for _ in receive:  # closed by the feed when the task ends
                pass
    return await final_row(s, task_id)


def ended_error(row: TaskRow) -> OpenAIError:
    return OpenAIError(ENDED_STATUS.get(row.status, 500),
                       f"task {row.id} {row.status}" + (f": {row.error}" if row.error else ""),
                       None, f"task_{row.status}")


def completed(row: TaskRow) -> TaskRow:
    if row.status != "completed":
        raise ended_error(row)
    return row


def token_usage(row: TaskRow) -> dict[str, int]:
    return usage(row.prompt_tokens, max(0, row.tokens_used - row.prompt_tokens))


def sse_data(body: Mapping[str, Any] | str) -> bytes:
    return f"data: {body if isinstance(body, str) else _encode(body)}\n\n".encode()


# Chunk makers: (text or None for the usage chunk, finish_reason, usage, first) -> chunk
ChunkMaker = Callable[[str | None, str | None, dict[str, int] | None, bool], dict[str, Any]]


async def stream_text(s: Services, task_id: str, text: TextRequest,
                      chunk: ChunkMaker) -> AsyncIterator[bytes]:
    """The OpenAI event stream of a text task: content chunks as the task's tokens
    arrive (stop sequences applied), the last one with finish_reason, the usage
    chunk when asked for, then [DONE]; an error event if the task fails. It runs
    outside the request's context: everything comes in as arguments."""
    scanner = StopScanner(text.stops)
    streamed = ""  # the task's text as the feed delivered it
    yield sse_data(chunk("", None, None, True))
    with s.feed.subscribe(task_id) as receive:
        await s.store.barrier()  # as in wait_for_end: an end published already is read
        row = await s.store.get_task(task_id)
        if row is not None and row.status in OPEN_STATES:
            while True:
                event = None
                with trio.move_on_after(SSE_KEEPALIVE_SECONDS):
                    try:
                        event = await receive.receive()
                    except trio.EndOfChannel:
                        break
                if event is None:
                    yield b": keep-alive\n\n"
                    continue
                kind, data = event
                tokens = data.get("tokens") if kind == "progress" else None
                if isinstance(tokens, list):
                    piece = "".join(t for t in tokens if isinstance(t, str))
                    streamed += piece
                    if out := scanner.feed(piece):
                        yield sse_data(chunk(out, None, None, False))
    row = await final_row(s, task_id)
    if row.status != "completed":
        yield sse_data(ended_error(row).body())
        return
    result = row.result or ""
    if result.startswith(streamed):  # what the feed missed (or all, for an ended task)
        rest = result[len(streamed):]
    else:
        log.warning("task %s: streamed text is not a prefix of its result", task_id)
        rest = ""
    out = scanner.feed(rest) + scanner.finish()
    if out:
        yield sse_data(chunk(out, None, None, False))
    reason = finish_reason(row.finish_reason, scanner.stopped)
    yield sse_data(chunk("", reason, None, False))
    if text.include_usage:
        yield sse_data(chunk(None, None, token_usage(row), False))
    yield sse_data("[DONE]")


def event_stream(body: AsyncIterator[bytes], headers: Mapping[str, str]) -> Response:
    response = Response(body, mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", **headers})
    response.timeout = None
    return response


# ---- the routes ---------------------------------------------------------------------


@openai_routes.get("/models")
async def list_models() -> Response:
    await current_caller()
    return openai_response(model_list(int(services().started_at)))


@openai_routes.get("/models/<model_id>")
async def get_model(model_id: str) -> Response:
    await current_caller()
    for model in model_list(int(services().started_at))["data"]:
        if model["id"] == model_id:
            return openai_response(model_object(model_id, model["created"]))
    raise OpenAIError(404, f"The model '{model_id[:100]}' does not exist", "model",
                      "model_not_found")


async def text_route(parse: Callable[[Mapping[str, Any]], TextRequest], prefix: str,
                     whole: Callable[[str, TaskRow, TextRequest], dict[str, Any]],
                     chunk_of: Callable[[str, int, TextRequest], ChunkMaker]) -> Response:
    await current_caller()  # 401 before 400
    body = await json_body()
    text = parse(body)
    created = await submit(text.task, body, text.params)
    headers = answer_headers(created)
    completion_id = f"{prefix}-{created.row.id}"
    if text.stream:
        chunk = chunk_of(completion_id, int(created.row.created_at), text)
        return event_stream(stream_text(services(), created.row.id, text, chunk), headers)
    row = completed(await wait_for_end(created.row.id))
    return openai_response(whole(completion_id, row, text), headers=headers)


def whole_chat(completion_id: str, row: TaskRow, text: TextRequest) -> dict[str, Any]:
    content, stopped = apply_stops(row.result or "", text.stops)
    return chat_completion(completion_id, int(row.created_at), row.model, content,
                           finish_reason(row.finish_reason, stopped), token_usage(row),
                           row.model_weights)


def chat_chunks(completion_id: str, created: int, text: TextRequest) -> ChunkMaker:
    def make(piece: str | None, reason: str | None, counts: dict[str, int] | None,
             first: bool) -> dict[str, Any]:
        if piece is None:
            return chat_chunk(completion_id, created, text.model, None, None, True, counts)
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else (
            {"content": piece} if piece else {})
        return chat_chunk(completion_id, created, text.model, delta, reason,
                          text.include_usage, None)
    return make


def whole_text(completion_id: str, row: TaskRow, text: TextRequest) -> dict[str, Any]:
    content, stopped = apply_stops(row.result or "", text.stops)
    return text_completion(completion_id, int(row.created_at), row.model, content,
                           finish_reason(row.finish_reason, stopped), token_usage(row))


def text_chunks(completion_id: str, created: int, text: TextRequest) -> ChunkMaker:
    def make(piece: str | None, reason: str | None, counts: dict[str, int] | None,
             first: bool) -> dict[str, Any]:
        return text_chunk(completion_id, created, text.model, piece, reason,
                          text.include_usage or piece is None, counts)
    return make


@openai_routes.post("/chat/completions")
async def chat_completions() -> Response:
    return await text_route(parse_chat, "chatcmpl", whole_chat, chat_chunks)


@openai_routes.post("/completions")
async def completions() -> Response:
    return await text_route(parse_completion, "cmpl", whole_text, text_chunks)


@openai_routes.post("/images/generations")
async def images_generations() -> Response:
    await current_caller()
    body = await json_body()
    image = parse_image(body)
    created = await submit(image.task, body, {"width": "size", "height": "size"})
    row = completed(await wait_for_end(created.row.id))
    if image.response_format == "b64_json":
        blob = await services().store.get_blob(row.id, IMAGE_BLOB)
        if blob is None:
            raise OpenAIError(500, f"task {row.id} completed without an image", None,
                              "image_missing")
        item = {"b64_json": base64.b64encode(blob.data).decode()}
    else:
        item = {"url": request.host_url.rstrip("/") + image_path(row.id)}
    return openai_response(image_body(int(row.created_at), item),
                           headers=answer_headers(created))


@openai_routes.post("/audio/transcriptions")
async def audio_transcriptions() -> Response:
    await current_caller()
    form = (await request.form).to_dict()
    upload = (await request.files).get("file")
    speech = parse_transcription(form, upload is not None)
    assert upload is not None
    audio = upload.read()
    if not audio:
        raise invalid("'file' is empty", "file")
    task = {**speech.task, "audio": base64.b64encode(audio).decode()}
    identity = {**form, "file": hashlib.sha256(audio).hexdigest()}
    created = await submit(task, identity, {"audio": "file"})
    row = completed(await wait_for_end(created.row.id))
    headers = answer_headers(created)
    if speech.response_format == "text":
        return Response((row.result or "") + "\n", mimetype="text/plain", headers=headers)
    return openai_response({"text": row.result or ""}, headers=headers)


@openai_routes.app_errorhandler(NotFound)
@openai_routes.app_errorhandler(MethodNotAllowed)
async def on_no_route(exc: HTTPException):  # type: ignore[no-untyped-def]
    """No route for the request: under /v1 in OpenAI's shape, elsewhere the
    reference's (as routes.py answers every other HTTP error)."""
    if request.path == "/v1" or request.path.startswith("/v1/"):
        return await on_openai_error(OpenAIError(
            exc.code or 404, f"Invalid URL ({request.method} {request.path[:200]})", None,
            "unknown_url"))
    headers = {name: value for name, value in exc.get_headers()  # a 405's Allow
               if name.lower() != "content-type"}
    return error_response(exc.code or 404, exc.name, exc.description or exc.name, headers)
