# Request validation: JSON bodies and query strings in, checked attrs values out.
#
# Rules:
# - Every check names the field and says why it failed; the first failure is
#   raised as `InvalidRequest(details)` and becomes a 400 with the reference's
#   error object. Nothing is written before a request has passed all checks.
# - Types are strict: a string is a `str` of valid Unicode (no lone surrogate,
#   which JSON's "\ud800" escapes can produce and no UTF-8 store can hold), an
#   integer is an `int` that is not a `bool`, a number is an `int` or `float` that
#   is finite and not a `bool`.
# - Unknown fields are refused (a misspelt `max_token` should not be silently
#   ignored), as OpenAI-style APIs do.
# - Limits: bodies up to MAX_BODY_BYTES (64 KiB), prompts up to MAX_PROMPT_CHARS.
# - A task's fields beyond prompt, model and priority, their defaults and limits,
#   are its model's task kind's (engine/core/kinds.py); a field of another kind is
#   refused, saying that it does not apply.
from __future__ import annotations

import functools
import json
import math
import re
from typing import Any, Mapping

import attrs

from engine.core import (
    DEFAULT_MODEL, MODELS, TASK_KINDS, VERIFY_FIELD, CatalogError, Priority, RequestField,
    TaskState, resolve_model,
)

MAX_BODY_BYTES = 64 * 1024
# A task's input file (speech: the audio), as uploaded; a JSON body carries it in
# base64, 4/3 as large.
MAX_UPLOAD_BYTES = 24 * 1024 * 1024
MAX_TASK_BODY_BYTES = MAX_BODY_BYTES + (MAX_UPLOAD_BYTES + 2) // 3 * 4
MAX_PROMPT_CHARS = 32_000
MAX_PAGE = 100
DEFAULT_PAGE = 20

SIGNUP_TYPES = ("developer", "node-operator", "researcher", "startup")
SOURCE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,39}$")
# Pragmatic address check (RFC 5321 lengths, one @, a dot in the domain, no spaces).
EMAIL_PATTERN = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@"
                           r"(?=.{4,253}$)([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
                           r"[A-Za-z]{2,63}$")


class InvalidRequest(ValueError):
    """400: `details` says which field is wrong and why."""

    def __init__(self, details: str) -> None:
        super().__init__(details)
        self.details = details


@attrs.frozen
class TaskRequest:
    prompt: str
    model: str  # canonical name
    priority: Priority
    fields: Mapping[str, Any]  # the model's task-kind fields, defaults filled in
    verify: str = str(VERIFY_FIELD.default)  # none | sampled | always (kinds.VERIFY_FIELD)

    def params(self) -> dict[str, Any]:
        """What the worker needs beside its input (the `assign` frame's params)."""
        inputs = {f.name for f in MODELS[self.model].kind.fields if f.input}
        return {name: value for name, value in self.fields.items() if name not in inputs}

    def inputs(self) -> dict[str, Any]:
        """The kind's fields that are the task's input (e.g. its audio), not params."""
        return {f.name: self.fields[f.name] for f in MODELS[self.model].kind.fields
                if f.input and f.name in self.fields}

    # The size quantities (0 where the kind has none), for callers and tests.
    @property
    def max_tokens(self) -> int:
        return int(self.fields.get("max_tokens", 0))

    @property
    def steps(self) -> int:
        return int(self.fields.get("steps", 0))

    @property
    def audio_seconds(self) -> float:
        return float(self.fields.get("audio_seconds", 0.0))


@attrs.frozen
class SignupRequest:
    email: str  # lower-cased
    type: str
    source: str


@attrs.frozen
class Page:
    limit: int
    cursor: int | None
    status: str | None


def parse_json_object(body: bytes, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    if len(body) > limit:
        raise InvalidRequest(f"the body is {len(body)} bytes; the limit is {limit}")
    if not body.strip():
        raise InvalidRequest("the body is empty; send a JSON object")
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"the body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"the body must be a JSON object, not {json_type(value)}")
    return value


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _string(body: Mapping[str, Any], name: str, default: str | None = None) -> str | None:
    if name not in body or (body[name] is None and default is not None):
        return default
    value = body[name]
    if not isinstance(value, str):
        raise InvalidRequest(f"The '{name}' field must be a string, not {json_type(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # JSON's \ud800 escapes decode to lone surrogates
        raise InvalidRequest(f"The '{name}' field is not valid Unicode text: a lone surrogate "
                             f"(\\u{ord(value[exc.start]):04x}) at character {exc.start}"
                             ) from None
    return value


def _integer(body: Mapping[str, Any], name: str, default: int | None, low: int,
             high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"The '{name}' field must be an integer, not {json_type(value)}")
    if not low <= value <= high:
        raise InvalidRequest(f"The '{name}' field must be between {low} and {high}, not {value}")
    return value


def _number(body: Mapping[str, Any], name: str, default: float, low: float, high: float,
            low_open: bool = False, least_positive: float = 0.0) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(f"The '{name}' field must be a number, not {json_type(value)}")
    if value > high or value < low or (low_open and value == low):
        lower = f"above {low:g}" if low_open else f"at least {low:g}"
        raise InvalidRequest(f"The '{name}' field must be {lower} and at most {high:g}, "
                             f"not {value:g}")
    if 0 < abs(value) < least_positive:
        raise InvalidRequest(f"The '{name}' field must be 0 or at least {least_positive:g} "
                             f"in size, not {value:g}")
    return float(value)


def _refuse_unknown(body: Mapping[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise InvalidRequest(f"unknown field '{unknown[0][:100]}' (known: {', '.join(known)})")


COMMON_TASK_FIELDS = ("prompt", "model", "priority", VERIFY_FIELD.name)


def _kind_field(body: Mapping[str, Any], field: RequestField) -> Any:
    """One task-kind field, checked against its table row."""
    if field.required and body.get(field.name) is None:
        raise InvalidRequest(f"The '{field.name}' field is required: {field.description}")
    if field.type == "integer":
        value = _integer(body, field.name, field.default,  # type: ignore[arg-type]
                         int(max(field.low, -2**63)) + (1 if field.low_open else 0),
                         int(min(field.high, 2**63 - 1)))
        if value is not None and field.multiple_of and value % field.multiple_of:
            raise InvalidRequest(f"The '{field.name}' field must be a multiple of "
                                 f"{field.multiple_of}, not {value}")
        return value
    if field.type == "number":
        return _number(body, field.name, field.default, field.low,  # type: ignore[arg-type]
                       field.high, low_open=field.low_open,
                       least_positive=field.least_positive)
    text = _string(body, field.name, field.default)  # type: ignore[arg-type]
    if text is not None and field.max_length and len(text) > field.max_length:
        raise InvalidRequest(f"The '{field.name}' field is {len(text)} characters; the limit "
                             f"is {field.max_length}")
    if text is not None and field.choices and text not in field.choices:
        raise InvalidRequest(f"The '{field.name}' field must be one of: "
                             f"{', '.join(field.choices)}")
    return text


@functools.cache
def _known_fields(kind: str) -> tuple[str, ...]:
    """The fields a task of `kind` takes (constant: worked out once per kind)."""
    return COMMON_TASK_FIELDS + tuple(f.name for f in TASK_KINDS[kind].fields)


def parse_task(body: Mapping[str, Any]) -> TaskRequest:
    model_name = _string(body, "model", DEFAULT_MODEL)
    try:
        model = resolve_model(model_name or "")
    except CatalogError as exc:
        raise InvalidRequest(f"The 'model' field is wrong: {exc}") from None
    kind = model.kind
    if kind.prompt_required and ("prompt" not in body or body["prompt"] is None):
        raise InvalidRequest("The 'prompt' field is required")
    prompt = _string(body, "prompt", "") or ""
    if kind.prompt_required and not prompt.strip():
        raise InvalidRequest("The 'prompt' field must not be empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"The 'prompt' field is {len(prompt)} characters; "
                             f"the limit is {MAX_PROMPT_CHARS}")
    priority_name = _string(body, "priority", "standard")
    try:
        priority = Priority.parse(priority_name or "")
    except ValueError as exc:
        raise InvalidRequest(f"The 'priority' field is wrong: {exc}") from None
    known = _known_fields(kind.name)
    unknown = set(body).difference(known)
    if unknown:  # said as precisely as can be: measured, another kind's, or unknown
        other_kinds = {f.name for other in TASK_KINDS.values() for f in other.fields}
        for name in sorted(unknown):
            if name in kind.measured:
                raise InvalidRequest(f"The '{name}' field is not taken from clients: it is "
                                     f"measured from the task's input")
            if name in other_kinds:
                raise InvalidRequest(f"The '{name}' field does not apply to {model.name} "
                                     f"({kind.name}); its fields are: {', '.join(known)}")
        _refuse_unknown(body, known)
    fields = {f.name: value for f in kind.fields
              if (value := _kind_field(body, f)) is not None}
    verify = _kind_field(body, VERIFY_FIELD)
    return TaskRequest(prompt, model.name, priority, fields, verify)


def parse_form_task(form: Mapping[str, str]) -> dict[str, Any]:
    """A multipart form's fields as the JSON body they stand for: the values of
    the model's integer and number fields parsed from their text."""
    body: dict[str, Any] = dict(form)
    try:
        kind = resolve_model(form.get("model") or DEFAULT_MODEL).kind
    except CatalogError:
        return body  # parse_task names the model
    for field in kind.fields:
        text = form.get(field.name)
        if text is None or field.type == "string":
            continue
        try:
            body[field.name] = int(text) if field.type == "integer" else float(text)
        except ValueError:
            raise InvalidRequest(f"The '{field.name}' field must be "
                                 f"{'an integer' if field.type == 'integer' else 'a number'}, "
                                 f"not {text[:40]!r}") from None
    return body


SIGNUP_FIELDS = ("email", "type", "source")


def parse_signup(body: Mapping[str, Any]) -> SignupRequest:
    if "email" not in body or body["email"] is None:
        raise InvalidRequest("The 'email' field is required")
    email = (_string(body, "email") or "").strip()
    if len(email) > 254 or not EMAIL_PATTERN.match(email):
        raise InvalidRequest("The 'email' field must be a valid email address")
    kind = _string(body, "type", "developer") or ""
    if kind not in SIGNUP_TYPES:
        raise InvalidRequest(f"The 'type' field must be one of: {', '.join(SIGNUP_TYPES)}")
    source = (_string(body, "source", "direct") or "").strip().lower()
    if not SOURCE_PATTERN.match(source):
        raise InvalidRequest("The 'source' field must be a short name such as website, "
                             "product-hunt or reddit (letters, digits, '.', '_', '-'; "
                             "at most 40)")
    _refuse_unknown(body, SIGNUP_FIELDS)
    return SignupRequest(email.lower(), kind, source)


TASK_STATES = tuple(s.value for s in TaskState)
DIGITS = re.compile(r"[0-9]{1,18}")


def parse_page(args: Mapping[str, str]) -> Page:
    limit_text = args.get("limit", str(DEFAULT_PAGE))
    if not DIGITS.fullmatch(limit_text) or not 1 <= int(limit_text) <= MAX_PAGE:
        raise InvalidRequest(f"The 'limit' parameter must be an integer from 1 to {MAX_PAGE}")
    cursor_text = args.get("cursor")
    if cursor_text is not None and not DIGITS.fullmatch(cursor_text):
        raise InvalidRequest("The 'cursor' parameter must be a 'next_cursor' from an "
                             "earlier page")
    status = args.get("status")
    if status is not None and status not in TASK_STATES:
        raise InvalidRequest(f"The 'status' parameter must be one of: {', '.join(TASK_STATES)}")
    return Page(int(limit_text), int(cursor_text) if cursor_text is not None else None, status)


__all__ = [
    "InvalidRequest", "MAX_BODY_BYTES", "MAX_PROMPT_CHARS", "MAX_TASK_BODY_BYTES",
    "MAX_UPLOAD_BYTES", "parse_form_task", "Page", "SignupRequest",
    "TaskRequest", "parse_json_object", "parse_page", "parse_signup", "parse_task",
]
