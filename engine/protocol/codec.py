# The worker protocol, version 1: JSON text frames <-> typed messages.
#
#     message = decode(text)          # raises ProtocolError(reason)
#     text = encode(message)
#
# Rules:
# - Pure (h11-style): no I/O, no clocks, no state. A driver (engine.runtime's
#   NodeSession, engine/worker's agent) reads frames, decodes them, and encodes
#   what it sends. Nothing here knows who sends what; `WORKER_MESSAGES` and
#   `COORDINATOR_MESSAGES` say which side may send each type.
# - Every frame is one JSON object with a string `"type"`. Each message type has a
#   schema (SCHEMAS, data not ifs): field name -> (kind, required?). A kind is a
#   checker from KINDS that validates and converts one JSON value. Unknown fields
#   are ignored (a newer peer may add fields; fields are never renamed), except in
#   `progress`, whose extra fields are the partial output and are kept as is.
# - decode never raises anything but ProtocolError, whatever the input: malformed
#   JSON, NaN/Infinity, a non-object, an unknown type, a missing or wrong-typed
#   field, or a frame over `max_bytes` (UTF-8) all say what was wrong, briefly.
#   When the frame named a task (a valid `task_id`), the error carries it
#   (`ProtocolError.task_id`, with `frame_type`), so that a driver can settle that
#   task (a refused `result` fails the run on that node) instead of losing it.
# - Every value must be storable and re-sendable as it is: an integer outside the
#   signed 64-bit range, or a string anywhere in the frame with a lone surrogate
#   (JSON's "\ud800" escape decodes to text that is not Unicode and that no UTF-8
#   encoder, SQLite's included, accepts), makes the frame a ProtocolError. We refuse
#   rather than repair (U+FFFD): a correct peer never sends either, and silently
#   altered output would reach the client as if the model had written it.
# - Times on the wire are durations in seconds, never absolute: the two sides
#   share no clock. `assign.deadline` is the seconds the worker has left, or null.
#
# Frames (DESIGN.md, "Worker protocol"; fields beyond it are marked +):
#   worker -> coordinator
#     hello      {protocol, token, name, location, gpu{name, vram_gb}, models[], slots,
#                 price_per_hour?, +region, +loaded[], +weights{model: words}}
#     heartbeat  {running[], load, +loaded[]?}
#     accepted   {task_id}
#     progress   {task_id, ...partial output, e.g. tokens[], index}
#     result     {task_id, output, usage{tokens|steps|audio_seconds, seconds,
#                 +prompt_tokens}, +finish_reason, +proof{}}
#                 proof: what the runner commits to beside its output so that a
#                 validator can check it cheaply (e.g. activation commitments)
#     failed     {task_id, error, retryable}
#     +draining  {}   the worker takes no new work and will leave when done
#   coordinator -> worker
#     welcome    {node_id, heartbeat_interval, +heartbeat_timeout, +protocol}
#     assign     {task_id, model, input, params, deadline, +attempt, +verify{}}
#                 verify: present when the job is a verification of another node's
#                 result: {claimed: <that result's output>, proof: <its proof>};
#                 the worker answers with a result whose output is the verdict
#                 {passed: bool, score: number, detail: str}
#     cancel     {task_id, +reason}
#     error      {message, +retry}   (then, when fatal, the coordinator closes;
#                 retry false: a refusal that reconnecting cannot fix, e.g. a bad token)
from __future__ import annotations

import json
import re
from typing import Any, Callable, Mapping

import attrs

from engine.core.events import Usage

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 32 << 20  # 32 MiB: an audio input or an image result fits; a runaway frame does not
MAX_ID_CHARS = 256
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1  # what SQLite (and most JSON peers) store
# A JSON escape of a UTF-16 surrogate: the only way a lone surrogate gets into decoded
# text (a proper pair decodes to one code point; the check then finds nothing).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
# A run of 19 digits: the shortest text of an integer outside the signed 64-bit range
# (INT_MAX has 19 digits). A frame without one holds no such integer, so the walk
# over its values (_out_of_range) is skipped; a match only means "look".
# (Written as one digit and then 18: the regex engine then skips ahead to a digit,
# twice as fast as "[0-9]{19}" on a typical frame; the same matches.)
_LONG_DIGITS = re.compile(r"[0-9][0-9]{18}")
# One encoder for every frame (json.dumps builds a new one per call when given options).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class ProtocolError(ValueError):
    """A frame that is not a valid protocol v1 message; str(exc) says why. When the
    frame had a valid `task_id`, `task_id` and `frame_type` say which task and frame."""

    def __init__(self, reason: str, task_id: str | None = None,
                 frame_type: str | None = None) -> None:
        super().__init__(reason)
        self.task_id = task_id
        self.frame_type = frame_type


# ---- messages -----------------------------------------------------------------


@attrs.frozen
class Gpu:
    name: str
    vram_gb: float


@attrs.frozen
class Hello:
    token: str
    gpu: Gpu
    models: tuple[str, ...]
    slots: int
    name: str = ""
    location: str = ""
    price_per_hour: float | None = None
    region: str = ""
    loaded: tuple[str, ...] = ()
    protocol: int = PROTOCOL_VERSION
    # model -> the weights that serve it, in words ("SmolLM2-135M-Instruct (stand-in
    # for llama2:7b)"): what the API shows a client of the task it ran
    weights: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Heartbeat:
    running: tuple[str, ...] = ()
    load: float = 0.0
    loaded: tuple[str, ...] | None = None


@attrs.frozen
class Accepted:
    task_id: str


@attrs.frozen
class Progress:
    task_id: str
    partial: Mapping[str, Any] = attrs.field(factory=dict)  # flattened into the frame


@attrs.frozen
class Result:
    task_id: str
    output: Any
    usage: Usage
    finish_reason: str = ""
    proof: Mapping[str, Any] | None = None  # the runner's commitments, for a validator


@attrs.frozen
class Failed:
    task_id: str
    error: str
    retryable: bool = True


@attrs.frozen
class Draining:
    pass


@attrs.frozen
class Welcome:
    node_id: str
    heartbeat_interval: float
    heartbeat_timeout: float | None = None  # None: the coordinator never times out
    protocol: int = PROTOCOL_VERSION


@attrs.frozen
class AssignTask:
    task_id: str
    model: str
    input: Mapping[str, Any]
    params: Mapping[str, Any] = attrs.field(factory=dict)
    deadline: float | None = None  # seconds left, from receipt; None: no deadline
    attempt: int = 1
    # a verification job: {"claimed": output, "proof": proof-or-null} of the result
    # under test; None for an ordinary run
    verify: Mapping[str, Any] | None = None


@attrs.frozen
class CancelTask:
    task_id: str
    reason: str = ""


@attrs.frozen
class Error:
    message: str
    retry: bool = True  # False: reconnecting as the same worker cannot help
    retry_after: float | None = None  # seconds to wait before reconnecting, when known
    # a coordinator that does not lead (a standby, an API process): the worker URL
    # of the one that does, when known ("" when not): connect there instead
    leader: str = ""


Message = (Hello | Heartbeat | Accepted | Progress | Result | Failed | Draining
           | Welcome | AssignTask | CancelTask | Error)

# wire type <-> class
TYPES: dict[str, type] = {
    "hello": Hello, "heartbeat": Heartbeat, "accepted": Accepted, "progress": Progress,
    "result": Result, "failed": Failed, "draining": Draining,
    "welcome": Welcome, "assign": AssignTask, "cancel": CancelTask, "error": Error,
}
TYPE_NAMES: dict[type, str] = {cls: name for name, cls in TYPES.items()}
WORKER_MESSAGES = frozenset({Hello, Heartbeat, Accepted, Progress, Result, Failed, Draining})
COORDINATOR_MESSAGES = frozenset({Welcome, AssignTask, CancelTask, Error})


# ---- field kinds: validate + convert one JSON value ---------------------------


def _fail(expected: str, value: Any) -> ProtocolError:
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return ProtocolError(f"expected {expected}, got {shown}")


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise _fail("a string", value)
    return value


def _id(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS:
        raise _fail(f"a non-empty string of at most {MAX_ID_CHARS} characters", value)
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail("an integer", value)
    if not INT_MIN <= value <= INT_MAX:
        raise ProtocolError(f"expected a 64-bit integer, got one of {len(str(value))} digits")
    return value


def _number(value: Any) -> float:
    # json.loads rejects NaN/Infinity (see decode), so any float here is finite.
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise _fail("a non-negative number", value)
    return float(value)


def _optional_number(value: Any) -> float | None:
    return None if value is None else _number(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail("true or false", value)
    return value


def _ids(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _fail("a list of strings", value)
    return tuple(_id(item) for item in value)


def _optional_ids(value: Any) -> tuple[str, ...] | None:
    return None if value is None else _ids(value)


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail("an object", value)
    return value


def _optional_object(value: Any) -> dict[str, Any] | None:
    return None if value is None else _object(value)


def _any(value: Any) -> Any:
    return value


MAX_WEIGHTS_CHARS = 300  # a description of one model's weights


def _weights(value: Any) -> dict[str, str]:
    fields = _object(value)
    out = {}
    for model, words in fields.items():
        text = _str(words)
        if len(text) > MAX_WEIGHTS_CHARS:
            raise ProtocolError(f"weights of {model[:50]!r}: at most {MAX_WEIGHTS_CHARS} "
                                "characters")
        out[_id(model)] = text
    return out


def _gpu(value: Any) -> Gpu:
    fields = _object(value)
    return Gpu(_checked(fields, "gpu.name", "name", _str), _checked(fields, "gpu.vram_gb",
                                                                    "vram_gb", _number))


_USAGE_FIELDS = {"tokens": _int, "prompt_tokens": _int, "steps": _int,
                 "audio_seconds": _number}


def _usage(value: Any) -> Usage:
    fields = _object(value)
    seconds = _checked(fields, "usage.seconds", "seconds", _number)
    extra = {}
    for key, kind in _USAGE_FIELDS.items():
        if key in fields:
            extra[key] = _checked(fields, f"usage.{key}", key, kind)
    for count in extra.values():  # after every field is checked: a wrong type is named first
        if count < 0:
            raise ProtocolError("usage counts must be non-negative")
    return Usage(seconds=seconds, **extra)


def _checked(fields: Mapping[str, Any], label: str, key: str,
             kind: Callable[[Any], Any]) -> Any:
    if key not in fields:
        raise ProtocolError(f"missing field {label!r}")
    try:
        return kind(fields[key])
    except ProtocolError as exc:
        raise ProtocolError(f"field {label!r}: {exc}") from None


Kind = Callable[[Any], Any]
REQUIRED, OPTIONAL = True, False

# type -> field -> (kind, required). Optional fields absent from a frame take the
# class default; `progress` keeps every other field as its partial output.
SCHEMAS: dict[type, dict[str, tuple[Kind, bool]]] = {
    Hello: {
        "protocol": (_int, REQUIRED), "token": (_str, REQUIRED), "name": (_str, OPTIONAL),
        "location": (_str, OPTIONAL), "gpu": (_gpu, REQUIRED), "models": (_ids, REQUIRED),
        "slots": (_int, REQUIRED), "price_per_hour": (_optional_number, OPTIONAL),
        "region": (_str, OPTIONAL), "loaded": (_ids, OPTIONAL),
        "weights": (_weights, OPTIONAL),
    },
    Heartbeat: {"running": (_ids, REQUIRED), "load": (_number, OPTIONAL),
                "loaded": (_optional_ids, OPTIONAL)},
    Accepted: {"task_id": (_id, REQUIRED)},
    Progress: {"task_id": (_id, REQUIRED)},
    Result: {"task_id": (_id, REQUIRED), "output": (_any, REQUIRED),
             "usage": (_usage, REQUIRED), "finish_reason": (_str, OPTIONAL),
             "proof": (_optional_object, OPTIONAL)},
    Failed: {"task_id": (_id, REQUIRED), "error": (_str, REQUIRED),
             "retryable": (_bool, OPTIONAL)},
    Draining: {},
    Welcome: {"node_id": (_id, REQUIRED), "heartbeat_interval": (_number, REQUIRED),
              "heartbeat_timeout": (_optional_number, OPTIONAL), "protocol": (_int, OPTIONAL)},
    AssignTask: {"task_id": (_id, REQUIRED), "model": (_id, REQUIRED),
                 "input": (_object, REQUIRED), "params": (_object, OPTIONAL),
                 "deadline": (_optional_number, OPTIONAL), "attempt": (_int, OPTIONAL),
                 "verify": (_optional_object, OPTIONAL)},
    CancelTask: {"task_id": (_id, REQUIRED), "reason": (_str, OPTIONAL)},
    Error: {"message": (_str, REQUIRED), "retry": (_bool, OPTIONAL),
            "retry_after": (_optional_number, OPTIONAL), "leader": (_str, OPTIONAL)},
}


# ---- decode / encode ----------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _not_unicode(value: Any) -> str | None:
    """A string in `value` (keys included) that is not valid Unicode, or None."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _out_of_range(value: Any) -> int | None:
    """An integer in `value` outside the signed 64-bit range, or None."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, int) and not INT_MIN <= item <= INT_MAX:
            return item
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def decode(text: str, max_bytes: int = MAX_FRAME_BYTES) -> Message:
    """The message in one text frame; ProtocolError saying why when it is not one."""
    if not isinstance(text, str):
        raise ProtocolError("frames must be text")
    # Cheap bound first: a UTF-8 encoding is 1-4 bytes a character.
    if len(text) > max_bytes or (len(text) * 4 > max_bytes
                                 and len(text.encode("utf-8", "surrogatepass")) > max_bytes):
        raise ProtocolError(f"frame too large (limit {max_bytes} bytes)")
    try:
        if text.startswith("\ufeff"):  # as json.loads refuses it
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        # One decoder for every frame (json.loads builds one per call when given
        # options). A frame that starts with "{" and ends where the object does is
        # decoded in one step; anything else (whitespace around it, trailing data,
        # errors) goes through the decoder's full path, which says what is wrong
        # exactly as json.loads would.
        data, end = _DECODER.raw_decode(text) if text[:1] == "{" else (None, -1)
        if end != len(text):
            data = _DECODER.decode(text)
    except ProtocolError:
        raise
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("a frame must be a JSON object")
    type_name = data.get("type")
    if not isinstance(type_name, str):
        raise ProtocolError("missing field 'type'")
    cls = TYPES.get(type_name)
    if cls is None:
        raise ProtocolError(f"unknown message type {type_name[:40]!r}")
    schema = SCHEMAS[cls]
    task_id = data.get("task_id")
    if not isinstance(task_id, str) or not task_id or len(task_id) > MAX_ID_CHARS:
        task_id = None
    fields: dict[str, Any] = {}
    for key, (kind, required) in schema.items():
        if key in data:
            try:
                fields[key] = kind(data[key])
            except ProtocolError as exc:
                raise ProtocolError(f"{type_name}: field {key!r}: {exc}", task_id,
                                    type_name) from None
        elif required:
            raise ProtocolError(f"{type_name}: missing field {key!r}", task_id, type_name)
    if _SURROGATE_ESCAPE.search(text) is not None:
        bad = _not_unicode(data)
        if bad is not None:
            raise ProtocolError(f"{type_name}: text with a lone surrogate ({bad[:20]!r}) "
                                "is not valid Unicode", None if task_id is None
                                or _not_unicode(task_id) else task_id, type_name)
    if (cls is Result or cls is Progress) and _LONG_DIGITS.search(text) is not None:
        big = _out_of_range(data)  # free-form values: ints must fit too
        if big is not None:
            raise ProtocolError(f"{type_name}: an integer of {len(str(big))} digits does "
                                "not fit in 64 bits", task_id, type_name)
    if cls is Progress:
        fields["partial"] = {k: v for k, v in data.items() if k not in ("type", "task_id")}
    message: Message = cls(**fields)
    return message


def _wire_gpu(value: Gpu) -> dict[str, Any]:
    return {"name": value.name, "vram_gb": value.vram_gb}


def _wire_usage(value: Usage) -> dict[str, Any]:
    usage: dict[str, Any] = {"seconds": value.seconds}
    usage.update((k, getattr(value, k)) for k in _USAGE_FIELDS if getattr(value, k))
    return usage


# Values that are not JSON as they are, by type -> their wire form. Anything else
# goes out as it is (the encoder writes a tuple as a list).
_WIRE: dict[type, Callable[[Any], Any]] = {Gpu: _wire_gpu, Usage: _wire_usage}
# type -> its fields in wire order (a frame's keys follow its schema)
_FIELDS: dict[type, tuple[str, ...]] = {cls: tuple(schema) for cls, schema in SCHEMAS.items()}


def encode(message: Message) -> str:
    """The text frame for a message (compact JSON, `type` first)."""
    cls = type(message)
    frame: dict[str, Any] = {"type": TYPE_NAMES[cls]}
    if isinstance(message, Progress):
        frame["task_id"] = message.task_id
        frame.update((k, v) for k, v in message.partial.items() if k not in frame)
    else:
        wire = _WIRE
        for key in _FIELDS[cls]:
            value = getattr(message, key)
            to_wire = wire.get(type(value))
            frame[key] = value if to_wire is None else to_wire(value)
    return _ENCODER.encode(frame)


__all__ = [
    "PROTOCOL_VERSION", "MAX_FRAME_BYTES", "MAX_ID_CHARS", "INT_MAX", "INT_MIN", "ProtocolError", "Message", "TYPES",
    "TYPE_NAMES", "WORKER_MESSAGES", "COORDINATOR_MESSAGES", "SCHEMAS",
    "Gpu", "Hello", "Heartbeat", "Accepted", "Progress", "Result", "Failed", "Draining",
    "Welcome", "AssignTask", "CancelTask", "Error", "decode", "encode",
]
