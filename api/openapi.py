# The OpenAPI 3.1 description of the REST API, served at /openapi.json.
#
# Rules: it describes what routes.py and views.py do, field for field; a test
# checks that every route of the app appears here and that the documented limits
# are the ones validation.py enforces. Schemas are built by small helpers so the
# document stays readable as data.
from __future__ import annotations

from typing import Any

from engine.core import MODELS, TASK_KINDS, VERIFY_FIELD, RequestField

from .access import DEFAULT_TIERS
from .network_watch import NODE_STATUSES
from .openapi_observe import OBSERVE_PATHS
from .validation import MAX_BODY_BYTES, MAX_PAGE, MAX_PROMPT_CHARS, SIGNUP_TYPES, TASK_STATES


def obj(required: list[str] | None = None, **properties: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def s(description: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def n(description: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": "number", "description": description, **extra}


def i(description: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": "integer", "description": description, **extra}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "type": [schema["type"], "null"]}


def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "400": answer("Invalid request parameters (the body, a field or a query parameter)",
                  ref("Error")),
    "401": answer("Missing (with --auth required), malformed, unknown or revoked API key",
                  ref("Error")),
    "500": answer("Server error", ref("Error")),
}
RATE_HEADERS = {
    "X-RateLimit-Limit": {"schema": {"type": "integer"},
                          "description": "task submissions allowed per hour"},
    "X-RateLimit-Remaining": {"schema": {"type": "integer"},
                              "description": "submissions left now"},
    "X-RateLimit-Reset": {"schema": {"type": "integer"},
                          "description": "unix time at which the full hourly budget is back"},
}
TASK_ID = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}
NOT_FOUND = answer("No such task, or another key's task", ref("Error"))

TIERS_TEXT = "; ".join(f"{t.name}: {t.per_hour} submissions/hour, {t.in_flight} tasks in flight"
                       for t in DEFAULT_TIERS.values())

def kind_field(field: RequestField, kinds: list[str]) -> dict[str, Any]:
    """A task-kind field's schema, from its row in the task-kind table."""
    schema: dict[str, Any] = {"type": field.type}
    if field.low > float("-inf"):
        schema["exclusiveMinimum" if field.low_open else "minimum"] = field.low
    if field.high < float("inf"):
        schema["maximum"] = field.high
    if field.multiple_of:
        schema["multipleOf"] = field.multiple_of
    if field.choices:
        schema["enum"] = list(field.choices)
    if field.max_length:
        schema["maxLength"] = field.max_length
    default = "" if field.default is None else f" (default {field.default})"
    schema["description"] = f"{', '.join(kinds)}: {field.description}{default}"
    return schema


def kind_fields() -> dict[str, Any]:
    """Every task kind's request fields (a field shared by kinds is described once)."""
    owners: dict[str, list[str]] = {}
    rows: dict[str, RequestField] = {}
    for kind in TASK_KINDS.values():
        for field in kind.fields:
            owners.setdefault(field.name, []).append(kind.name)
            rows.setdefault(field.name, field)
    return {name: kind_field(rows[name], owners[name]) for name in rows}


SCHEMAS: dict[str, Any] = {
    "Error": obj(["success", "error", "details", "timestamp"],
                 success={"type": "boolean", "const": False}, error=s("what went wrong"),
                 details=s("which field or limit, and why"),
                 timestamp=s("ISO-8601 UTC", format="date-time")),
    "TaskRequest": obj(
        ["prompt"],
        prompt=s("the task's input text", minLength=1, maxLength=MAX_PROMPT_CHARS),
        model=s("model name or alias; default llama2:7b",
                enum=sorted([*MODELS, *(a for m in MODELS.values() for a in m.aliases)])),
        priority=s("default standard; higher is served first and costs more",
                   enum=["standard", "high", "critical"]),
        verify=kind_field(VERIFY_FIELD, ["every kind"]),
        **kind_fields(),
    ) | {"additionalProperties": False},
    "TaskCreated": obj(
        ["success", "task_id", "status", "estimated_time", "node", "cost", "message"],
        success={"type": "boolean"}, task_id=s("task_<unix seconds>_<random>"),
        status=s(enum=["queued"]), estimated_time=s("whole seconds, e.g. \"3s\""),
        warning=nullable(s("set when no online node serves the model: the task waits for "
                           "one until its deadline (20 minutes by default), then expires")),
        node=obj(id=nullable(s("expected node; null when none serving the model is online")),
                 location=nullable(s()), gpu=s("GPU class the estimate assumes")),
        cost=obj(estimated=s("dollars, e.g. \"$0.001\""),
                 comparison=obj(openai=s("the same work at OpenAI list prices"),
                                savings=s("e.g. \"98.3%\"")),
                 estimated_usd=n("the estimate as a number")),
        message=s(), model=s("canonical model name"), priority=s(),
        created_at=s(format="date-time"),
    ),
    "Task": obj(
        ["id", "status", "result", "created_at", "completed_at", "processing_time", "cost",
         "tokens_used", "node"],
        id=s(), status=s(enum=list(TASK_STATES)),
        result=nullable(s("generated text; for an image, the URL of its PNG "
                          "(GET /api/tasks/{id}/image.png); other outputs: their JSON; "
                          "null until completed")),
        created_at=s(format="date-time"),
        completed_at=nullable(s("when the task ended", format="date-time")),
        processing_time=n("GPU seconds measured by the node; 0 until completed"),
        cost=n("dollars charged; 0 unless completed"),
        tokens_used=i("prompt + generated tokens; 0 until completed"),
        node=nullable(obj(id=s(), location=s(), gpu=s())),
        model=s(), priority=s(), started_at=nullable(s(format="date-time")),
        estimated_cost=n("dollars quoted at submission"),
        error=nullable(s("why it failed, expired, was rejected")),
        params=obj(),
        content_type=s("what `result` is: text/plain, or image/png for the URL of an image"),
        model_weights=nullable(s("the weights that ran the task, as its node named them; "
                                 "a stand-in for the requested model says so")),
        verify=s("the verification asked for", enum=list(VERIFY_FIELD.choices)),
        verification=obj(
            ["mode", "status"], mode=s(enum=list(VERIFY_FIELD.choices)),
            status=s("pending (waiting for a validator's verdict), passed, failed, unverified "
                     "(delivered without a verdict: detail says why), skipped (not sampled, "
                     "not requested, or produced by an operator-trusted node)",
                     enum=["pending", "passed", "failed", "unverified", "skipped"]),
            producer=nullable(s("the node whose result was checked")),
            validator=nullable(s("the node that checked it")),
            score=nullable(n("the validator's score")), detail=s(),
            rerun={"type": "boolean",
                   "description": "a result of this task failed verification and it ran again"},
            failed_results={"type": "array", "items": obj()}),
        metered_by=nullable(s("who counted the usage that cost and tokens_used follow: "
                              "'coordinator', or 'node, bounded' when the coordinator has "
                              "no tokenizer for the node's weights")),
    ),
}

PATHS: dict[str, Any] = {
    "/api/tasks": {
        "post": {
            "summary": "Submit an AI task",
            "description": (f"Rate limits per caller ({TIERS_TEXT}; anonymous callers count "
                            f"as beta, per client address). Bodies up to {MAX_BODY_BYTES} "
                            "bytes. The task is stored before its id is returned."),
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": ref("TaskRequest")}}},
            "responses": {
                "200": answer("Accepted and queued", ref("TaskCreated")) | {"headers": RATE_HEADERS},
                **ERRORS,
                "429": answer("Rate limit (hourly budget or tasks in flight); see Retry-After",
                              ref("Error")),
            },
        },
        "get": {
            "summary": "The caller's own tasks, newest first",
            "parameters": [
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                             "maximum": MAX_PAGE, "default": 20}},
                {"name": "cursor", "in": "query", "schema": {"type": "string"},
                 "description": "next_cursor of the previous page"},
                {"name": "status", "in": "query", "schema": {"type": "string",
                                                              "enum": list(TASK_STATES)}},
            ],
            "responses": {"200": answer("A page of tasks", obj(
                success={"type": "boolean"}, tasks={"type": "array", "items": ref("Task")},
                count=i(), next_cursor=nullable(s("null on the last page")))), **ERRORS},
        },
    },
    "/api/tasks/{task_id}": {
        "parameters": [TASK_ID],
        "get": {"summary": "Status and result of a task",
                "responses": {"200": answer("The task", obj(success={"type": "boolean"},
                                                            task=ref("Task"))),
                              "404": NOT_FOUND, **ERRORS}},
        "delete": {"summary": "Cancel a queued or running task",
                   "responses": {"200": answer("Cancelled", obj(
                       success={"type": "boolean"}, message=s(), task=ref("Task"))),
                       "404": NOT_FOUND,
                       "409": answer("The task had already ended", ref("Error")), **ERRORS}},
    },
    "/api/tasks/{task_id}/image.png": {
        "parameters": [TASK_ID],
        "get": {"summary": "The image an image-generation task produced",
                "responses": {"200": {"description": "The PNG",
                                      "content": {"image/png": {"schema": {
                                          "type": "string", "format": "binary"}}}},
                              "404": NOT_FOUND, **ERRORS}},
    },
    "/api/tasks/{task_id}/stream": {
        "parameters": [TASK_ID],
        "get": {"summary": "Server-Sent Events of a task: `status` events, `progress` events "
                           "(the worker's partial output, e.g. generated tokens; the first one "
                           "replays all the text so far, `replayed: true`), and a final "
                           "`done` event with the task object",
                "responses": {"200": {"description": "text/event-stream",
                                      "content": {"text/event-stream": {}}},
                              "404": NOT_FOUND, **ERRORS}},
    },
    "/api/beta/signup": {
        "post": {
            "summary": "Join the beta program (an email already signed up answers its "
                       "earlier signup_id and already_registered: true)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": obj(
                ["email"], email=s(format="email"),
                type=s("default developer", enum=list(SIGNUP_TYPES)),
                source=s("website, product-hunt, reddit, ... (default direct)",
                         pattern="^[a-z0-9][a-z0-9._-]{0,39}$"),
            ) | {"additionalProperties": False}}}},
            "responses": {"200": answer("Signed up", obj(
                success={"type": "boolean"}, message=s(), signup_id=s("beta_<unix>_<random>"),
                bonuses=obj(free_tasks=i(), lifetime_discount=i(),
                            priority_support={"type": "boolean"},
                            early_access={"type": "boolean"}),
                next_steps={"type": "array", "items": s()},
                already_registered={"type": "boolean"})), "400": ERRORS["400"]},
        },
    },
    "/api/network/status": {
        "get": {"summary": "Live status of the network: nodes from the coordinator, totals "
                           "from the database",
                "responses": {"200": answer("Network status", obj(
                    success={"type": "boolean"}, timestamp=s(format="date-time"),
                    network=obj(nodes_online=i("every connected node, quarantined and "
                                               "draining ones included"),
                                total_tasks=i(), completed_tasks=i(),
                                queued_tasks=i(), success_rate=n("percent"),
                                avg_response_time=s("created to completed, e.g. \"2.3s\""),
                                cost_savings_vs_openai=s(), uptime=s("service availability"),
                                nodes_by_status={"type": "object", "properties": {
                                    status: i() for status in NODE_STATUSES}}),
                    nodes={"type": "array", "items": obj(
                        id=s(), location=s(), status=s(enum=list(NODE_STATUSES)), gpu=s(),
                        tasks_processed=i(),
                        reputation=obj(
                            score=n("Beta posterior mean of its verified results"),
                            verified=i(), failed=i(), validator={"type": "boolean"},
                            trusted={"type": "boolean", "description": (
                                "operator-trusted (--trusted-node): a validator whose own "
                                "results are not verified, never on probation")},
                            probation_limit=nullable(i("at most this many of its tasks "
                                                       "running or held; null: no limit"))),
                        quarantined={"type": "boolean"},
                        measured_speed={"type": "object", "description": (
                            "model -> {rate, unit, gpu_class, price_per_hour, reclassed}: "
                            "what its timed runs showed")},
                        gpu_claim_contradicted={"type": "boolean"})},
                    stats=obj(beta_signups=i(), total_compute_time=s(), total_savings=s())))}},
    },
    "/api/models": {
        "get": {"summary": "The model catalog: which models are served now, by how many "
                           "nodes, and the price per work unit",
                "responses": {"200": answer("Models", obj(
                    success={"type": "boolean"}, models={"type": "array", "items": obj(
                        id=s(), aliases={"type": "array", "items": s()}, description=s(),
                        task_type=s(), available={"type": "boolean"}, nodes_online=i(),
                        weights={"type": "array", "items": s(
                            "the weights online nodes run for it; a stand-in says so")},
                        queued_tasks=i(), pricing=obj(unit=s(), per_unit_usd=n(),
                                                      per_1000_units=s(), gpu=s(),
                                                      openai_reference=s()))}))}},
    },
    "/health": {
        "get": {"summary": "Health check",
                "responses": {"200": answer("Healthy", obj(
                    status=s(), service=s(), version=s(), environment=s(),
                    timestamp=s(format="date-time"), uptime=i("seconds"), uptime_human=s(),
                    memory=obj(used=s("resident memory of the process"),
                               total=s("memory of the machine"), used_bytes=i(),
                               total_bytes=i()),
                    network=obj(nodes_online=i(), total_tasks=i(), beta_signups=i())))}},
    },
    "/openapi.json": {"get": {"summary": "This document",
                              "responses": {"200": {"description": "OpenAPI 3.1"}}}},
    # The OpenAI-compatible API (openai_compat.py): OpenAI's own request and answer
    # shapes (see OpenAI's API reference), errors as {"error": {message, type, param,
    # code}}. Each POST is a task (X-NeuroGrid-Task-Id) and takes an Idempotency-Key.
    "/v1/models": {"get": {"summary": "OpenAI-compatible: the catalog's models and aliases "
                                      "(object: list)",
                           "responses": {"200": {"description": "A list of model objects"}}}},
    "/v1/models/{model_id}": {"get": {"summary": "OpenAI-compatible: one model object",
                                      "responses": {"200": {"description": "A model"},
                                                    "404": {"description": "Unknown model"}}}},
    "/v1/chat/completions": {"post": {
        "summary": "OpenAI-compatible chat completion (stream: true for server-sent "
                   "chat.completion.chunk events); model, messages, temperature, top_p, "
                   "max_tokens / max_completion_tokens, stop, seed, n (1), user, stream, "
                   "stream_options, and NeuroGrid's verify (none, sampled, always); any "
                   "other parameter is a 400",
        "responses": {"200": {"description": "chat.completion, or an event stream"}}}},
    "/v1/completions": {"post": {
        "summary": "OpenAI-compatible text completion (stream: true for events); model, "
                   "prompt, temperature, top_p, max_tokens, stop, seed, verify, n (1), "
                   "user, stream, "
                   "stream_options",
        "responses": {"200": {"description": "text_completion, or an event stream"}}}},
    "/v1/images/generations": {"post": {
        "summary": "OpenAI-compatible image generation: prompt, model, n (1), size (WxH), "
                   "response_format (url, b64_json), user, and NeuroGrid's verify (none, "
                   "sampled, always)",
        "responses": {"200": {"description": "{created, data: [{url | b64_json}]}"}}}},
    "/v1/audio/transcriptions": {"post": {
        "summary": "OpenAI-compatible transcription: multipart file, model, prompt, "
                   "language, response_format (json, text), and NeuroGrid's verify (none, "
                   "sampled, always)",
        "responses": {"200": {"description": "{text} or plain text"}}}},
    "/api/nodes/connect": {
        "get": {"summary": "Websocket endpoint for workers (worker protocol v1, DESIGN.md); "
                           "authenticated by the token in `hello` "
                           "(neurogrid nodes create --name NAME)",
                "responses": {"101": {"description": "Switching to the websocket protocol"}}},
    },
}


PATHS.update(OBSERVE_PATHS)  # metrics, dashboard, docs: openapi_observe.py


def openapi_document(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "NeuroGrid API", "version": version,
                 "description": "Decentralized AI inference. Authentication: "
                                "`Authorization: Bearer <key>` (neurogrid keys create)."},
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{}, {"bearer": []}],
        "paths": PATHS,
    }


__all__ = ["openapi_document"]
