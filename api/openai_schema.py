# The OpenAI-compatible API's requests and answers, as data: OpenAI request bodies
# in, NeuroGrid task bodies (for submission.create_task) out; stored task rows in,
# OpenAI's objects (chat.completion, text_completion, their stream chunks, model
# lists, error objects) out. Pure functions: no I/O, time comes in as an argument.
# The routes are in openai_compat.py.
#
# Rules:
# - Each endpoint's parameters are a table (ENDPOINT_PARAMS): the ones NeuroGrid
#   maps to task fields, and the ones it accepts at their neutral value only
#   (`presence_penalty: 0`, `n: 1`, `logprobs: false`, ...). Any other parameter,
#   or a neutral one at another value, is a 400 naming it (`param`): a client must
#   never believe a setting took effect when it did not.
# - Mapped: `temperature`, `top_p`, `seed` as they are, and NeuroGrid's own
#   `verify` (none | sampled | always; with the OpenAI SDKs, `extra_body`; also on the
#   image and transcription routes, a form field on the latter); `max_tokens` (or
#   `max_completion_tokens`, not both at different values) as the task's
#   `max_tokens`; `stop` (a string or up to 4) is applied by the API to the text
#   (NeuroGrid's workers have no stop sequences yet): the answer ends before the
#   first occurrence of any of them, streamed or not (StopScanner holds back text
#   that could begin one), and `finish_reason` is then "stop". The task itself runs
#   to its own end (and is charged for what it generated). `user` is accepted and
#   ignored. Defaults are the task kind's (engine/core/kinds.py), not OpenAI's:
#   greedy decoding (temperature 0) and 256 tokens unless the request says.
# - Chat messages become one prompt (the worker applies the model's chat template
#   to it): a single user message is the prompt as it is; with a system message
#   or earlier turns, the prompt is the transcript, one paragraph per message,
#   "System: ...", "User: ...", "Assistant: ..." (a `name` shows as
#   "User (name): ..."), separated by blank lines, ending with the last message,
#   which must be the user's. `developer` counts as system. Content is a string
#   or a list of text parts; other parts (images, audio) are refused.
# - `model` is a catalog name or alias (GET /v1/models lists both); an unknown one
#   is a 404 (`model_not_found`), a model of another kind a 400.
# - Ids name the task: `chatcmpl-<task id>`, `cmpl-<task id>`, so a client can
#   find its call in GET /api/tasks.
from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

import attrs

from engine.core import MODELS, CatalogError, ModelSpec, resolve_model
from engine.core.kinds import IMAGE_GENERATION, SPEECH_TO_TEXT, TEXT_GENERATION

__all__ = [
    "ENDPOINT_PARAMS", "ERROR_TYPES", "MAX_STOPS", "OpenAIError", "Params", "StopScanner",
    "TextRequest", "apply_stops", "chat_chunk", "chat_completion", "chat_prompt", "error_body",
    "finish_reason", "image_body", "model_list", "model_object", "parse_chat", "parse_completion",
    "parse_image", "parse_transcription", "text_chunk", "text_completion", "usage",
]

# status -> OpenAI's error type
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 409: "invalid_request_error",
               413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
               503: "server_error"}
MAX_STOPS = 4  # OpenAI's limit
OWNER = "neurogrid"


class OpenAIError(Exception):
    """An error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = dict(headers or {})

    @property
    def type(self) -> str:
        return ERROR_TYPES.get(self.status, "server_error" if self.status >= 500
                               else "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, kind: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def invalid(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param, code)


@attrs.frozen
class Params:
    """An endpoint's parameters: `mapped` go into the task (or shape the answer);
    `neutral` are accepted at these values only (None is always accepted)."""

    mapped: tuple[str, ...]
    neutral: Mapping[str, tuple[Any, ...]] = attrs.field(factory=dict)


_SAMPLING = ("temperature", "top_p", "seed", "stop", "n", "user", "stream", "stream_options",
             "verify")
ENDPOINT_PARAMS: dict[str, Params] = {
    "chat": Params(("model", "messages", "max_tokens", "max_completion_tokens", *_SAMPLING),
                   {"presence_penalty": (0,), "frequency_penalty": (0,), "logprobs": (False,),
                    "logit_bias": ({},), "parallel_tool_calls": (), "tools": ([],),
                    "response_format": ({"type": "text"},)}),
    "completion": Params(("model", "prompt", "max_tokens", *_SAMPLING),
                         {"presence_penalty": (0,), "frequency_penalty": (0,), "echo": (False,),
                          "best_of": (1,), "logprobs": (), "suffix": (), "logit_bias": ({},)}),
    "image": Params(("prompt", "model", "n", "size", "response_format", "user", "verify")),
    "transcription": Params(("file", "model", "prompt", "language", "response_format",
                             "verify")),
}


def check_params(body: Mapping[str, Any], endpoint: str, path: str) -> None:
    table = ENDPOINT_PARAMS[endpoint]
    for name, value in body.items():
        if name in table.mapped:
            continue
        if name in table.neutral:
            if value is None or any(value == v and type(value) is type(v)
                                    for v in table.neutral[name]):
                continue
            allowed = " or ".join(repr(v) for v in table.neutral[name]) or "null"
            raise invalid(f"'{name}' is not supported by NeuroGrid's {path} (only {allowed}, "
                          "which changes nothing)", name, "unsupported_parameter")
        raise invalid(f"'{name[:100]}' is not supported by NeuroGrid's {path}; supported: "
                      f"{', '.join(table.mapped)}", name[:100], "unsupported_parameter")


# ---- models ------------------------------------------------------------------


def model_object(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": OWNER}


def model_list(created: int) -> dict[str, Any]:
    """Every catalog model and alias, as GET /v1/models lists them."""
    names = [n for m in MODELS.values() for n in (m.name, *m.aliases)]
    return {"object": "list", "data": [model_object(n, created) for n in names]}


def find_model(name: Any, kind: str, path: str, param: str = "model") -> ModelSpec:
    if name is None:
        raise invalid(f"'{param}' is required: one of {', '.join(known_models())}", param)
    if not isinstance(name, str):
        raise invalid(f"'{param}' must be a string", param)
    try:
        model = resolve_model(name)
    except CatalogError:
        raise OpenAIError(404, f"The model '{name[:100]}' does not exist; known: "
                          f"{', '.join(known_models())}", param, "model_not_found") from None
    if model.task_type != kind:
        fitting = [n for m in MODELS.values() if m.task_type == kind for n in (m.name, *m.aliases)]
        raise invalid(f"{model.name} is a {model.task_type} model; {path} needs a {kind} "
                      f"model: {', '.join(fitting)}", param, "model_not_supported")
    return model


def known_models() -> list[str]:
    return [n for m in MODELS.values() for n in (m.name, *m.aliases)]


# ---- text: chat and completions ------------------------------------------------


@attrs.frozen
class TextRequest:
    """A chat or completion request, checked: the task body to submit and how to
    answer."""

    task: dict[str, Any]  # for create_task
    model: str  # canonical
    stream: bool
    include_usage: bool
    stops: tuple[str, ...]
    params: Mapping[str, str]  # task field -> the request parameter it came from


def _flag(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise invalid(f"'{name}' must be a boolean", name)
    return bool(value)


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise invalid("'stop' must be a string or an array of strings", "stop")
    if len(stops) > MAX_STOPS:
        raise invalid(f"'stop' may have at most {MAX_STOPS} sequences, not {len(stops)}", "stop")
    if any(not s for s in stops):
        raise invalid("'stop' sequences must not be empty", "stop")
    return tuple(stops)


def _text_request(body: Mapping[str, Any], endpoint: str, path: str, prompt: str,
                  prompt_param: str) -> TextRequest:
    model = find_model(body.get("model"), TEXT_GENERATION, path)
    if body.get("n") not in (None, 1):
        raise invalid("NeuroGrid answers one choice per request: 'n' must be 1", "n")
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise invalid("'stream_options' is only allowed with 'stream': true",
                          "stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise invalid("'stream_options' must be an object with 'include_usage' only",
                          "stream_options")
        include_usage = _flag(options, "include_usage")
    task: dict[str, Any] = {"model": model.name, "prompt": prompt}
    params = {"prompt": prompt_param, "model": "model"}
    limit, limit_param = body.get("max_tokens"), "max_tokens"
    other = body.get("max_completion_tokens")
    if other is not None:
        if limit is not None and limit != other:
            raise invalid("'max_tokens' and 'max_completion_tokens' differ; send one",
                          "max_completion_tokens")
        limit, limit_param = other, "max_completion_tokens"
    if limit is not None:
        task["max_tokens"], params["max_tokens"] = limit, limit_param
    for name in ("temperature", "top_p", "seed", "verify"):
        if body.get(name) is not None:
            task[name], params[name] = body[name], name
    return TextRequest(task, model.name, stream, include_usage, _stops(body.get("stop")), params)


CHAT_ROLES = {"system": "System", "developer": "System", "user": "User",
              "assistant": "Assistant"}
MESSAGE_FIELDS = ("role", "content", "name", "refusal")


def _message_text(message: Mapping[str, Any], where: str) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for n, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(
                    part.get("text"), str):
                raise invalid(f"{where}.content[{n}]: only text parts are supported "
                              "({\"type\": \"text\", \"text\": ...})", f"{where}.content")
            texts.append(part["text"])
        return "".join(texts)
    raise invalid(f"{where}.content must be a string or an array of text parts",
                  f"{where}.content")


def chat_prompt(messages: Any) -> str:
    """The task prompt of a chat (see the rules above)."""
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty array of messages", "messages")
    turns = []
    for n, message in enumerate(messages):
        where = f"messages[{n}]"
        if not isinstance(message, dict):
            raise invalid(f"{where} must be an object with 'role' and 'content'", where)
        for key in message:
            if key not in MESSAGE_FIELDS:
                raise invalid(f"{where}.{key[:50]} is not supported by NeuroGrid (a message "
                              f"has {', '.join(MESSAGE_FIELDS[:3])})", f"{where}.{key[:50]}",
                              "unsupported_parameter")
        if message.get("refusal") is not None:
            raise invalid(f"{where}.refusal is not supported", f"{where}.refusal")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise invalid(f"{where}.role must be one of {', '.join(CHAT_ROLES)}, not "
                          f"{str(role)[:50]!r}", f"{where}.role")
        name = message.get("name")
        if name is not None and not isinstance(name, str):
            raise invalid(f"{where}.name must be a string", f"{where}.name")
        label = CHAT_ROLES[role] + (f" ({name})" if name else "")
        turns.append((role, label, _message_text(message, where)))
    if turns[-1][0] != "user":
        raise invalid("the last message must be the user's: NeuroGrid answers it",
                      f"messages[{len(turns) - 1}].role")
    if not turns[-1][2].strip():
        raise invalid("the last message's content must not be empty",
                      f"messages[{len(turns) - 1}].content")
    if len(turns) == 1 and not messages[0].get("name"):
        return turns[0][2]
    return "\n\n".join(f"{label}: {text}" for _, label, text in turns)


def parse_chat(body: Mapping[str, Any]) -> TextRequest:
    check_params(body, "chat", "/v1/chat/completions")
    return _text_request(body, "chat", "/v1/chat/completions",
                         chat_prompt(body.get("messages")), "messages")


def parse_completion(body: Mapping[str, Any]) -> TextRequest:
    check_params(body, "completion", "/v1/completions")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise invalid("'prompt' must be a string (or an array of one string)", "prompt")
    return _text_request(body, "completion", "/v1/completions", prompt, "prompt")


def apply_stops(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the first occurrence of any stop sequence, and whether one
    occurred."""
    cuts = [i for s in stops if (i := text.find(s)) >= 0]
    return (text[:min(cuts)], True) if cuts else (text, False)


class StopScanner:
    """Stop sequences over streamed text: `feed` returns what may be sent now,
    holding back a tail that could still begin a stop sequence; `finish` returns
    the rest. What it sends in all equals `apply_stops` of the whole text."""

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = tuple(stops)
        self.held = ""
        self.stopped = False

    def _partial(self, text: str) -> int | None:
        """The first position from which `text` is a proper prefix of a stop."""
        for start in range(max(0, len(text) - max(map(len, self.stops)) + 1), len(text)):
            tail = text[start:]
            if any(len(tail) < len(s) and s.startswith(tail) for s in self.stops):
                return start
        return None

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        if not self.stops:
            return piece
        text = self.held + piece
        cuts = [i for s in self.stops if (i := text.find(s)) >= 0]
        partial = self._partial(text)
        if cuts and (partial is None or min(cuts) <= partial):
            self.stopped, self.held = True, ""
            return text[:min(cuts)]
        safe = len(text) if partial is None else partial
        self.held = text[safe:]
        return text[:safe]

    def finish(self) -> str:
        if self.stopped:
            return ""
        text, self.stopped = apply_stops(self.held, self.stops)
        self.held = ""
        return text


def finish_reason(runner_reason: str | None, stopped: bool) -> str:
    """OpenAI's finish_reason: "stop" for a stop sequence, else the runner's
    ("length" when it hit max_tokens)."""
    return "length" if not stopped and runner_reason == "length" else "stop"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_completion(completion_id: str, created: int, model: str, text: str, reason: str,
                    counts: dict[str, int], fingerprint: str | None) -> dict[str, Any]:
    return {
        "id": completion_id, "object": "chat.completion", "created": created, "model": model,
        "system_fingerprint": fingerprint,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text,
                                             "refusal": None},
                     "logprobs": None, "finish_reason": reason}],
        "usage": counts,
    }


def chat_chunk(completion_id: str, created: int, model: str, delta: dict[str, Any] | None,
               reason: str | None = None, include_usage: bool = False,
               counts: dict[str, int] | None = None) -> dict[str, Any]:
    """One chat.completion.chunk; `delta` None: the usage chunk (no choices)."""
    chunk: dict[str, Any] = {
        "id": completion_id, "object": "chat.completion.chunk", "created": created,
        "model": model, "system_fingerprint": None,
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                              "finish_reason": reason}],
    }
    if include_usage:
        chunk["usage"] = counts
    return chunk


def text_completion(completion_id: str, created: int, model: str, text: str,
                    reason: str | None, counts: dict[str, int] | None,
                    include_usage: bool = True) -> dict[str, Any]:
    """A text_completion object; streamed chunks are the same shape."""
    body: dict[str, Any] = {
        "id": completion_id, "object": "text_completion", "created": created, "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}],
    }
    if include_usage:
        body["usage"] = counts
    return body


def text_chunk(completion_id: str, created: int, model: str, text: str | None,
               reason: str | None = None, include_usage: bool = False,
               counts: dict[str, int] | None = None) -> dict[str, Any]:
    """A streamed text_completion; `text` None: the usage chunk (no choices)."""
    chunk = text_completion(completion_id, created, model, text or "", reason, counts,
                            include_usage)
    if text is None:
        chunk["choices"] = []
    return chunk


# ---- images and audio ------------------------------------------------------------

SIZE = re.compile(r"^([0-9]{1,5})x([0-9]{1,5})$")
IMAGE_FORMATS = ("url", "b64_json")
TRANSCRIPTION_FORMATS = ("json", "text")


@attrs.frozen
class ImageRequest:
    task: dict[str, Any]
    response_format: str


def parse_image(body: Mapping[str, Any]) -> ImageRequest:
    path = "/v1/images/generations"
    check_params(body, "image", path)
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise invalid("'prompt' is required: a string", "prompt")
    model = find_model(body.get("model", "stable-diffusion"), IMAGE_GENERATION, path)
    if body.get("n") not in (None, 1):
        raise invalid("NeuroGrid makes one image per request: 'n' must be 1", "n")
    task: dict[str, Any] = {"model": model.name, "prompt": prompt}
    size = body.get("size")
    if size is not None:
        match = SIZE.match(size) if isinstance(size, str) else None
        if match is None:
            raise invalid("'size' must be 'WIDTHxHEIGHT', e.g. '512x512'", "size")
        task["width"], task["height"] = int(match.group(1)), int(match.group(2))
    if body.get("verify") is not None:
        task["verify"] = body["verify"]  # checked with the task (kinds.VERIFY_FIELD)
    response_format = body.get("response_format") or "url"
    if response_format not in IMAGE_FORMATS:
        raise invalid(f"'response_format' must be one of {', '.join(IMAGE_FORMATS)}",
                      "response_format")
    return ImageRequest(task, response_format)


def image_body(created: int, item: dict[str, Any]) -> dict[str, Any]:
    return {"created": created, "data": [{**item, "revised_prompt": None}]}


@attrs.frozen
class TranscriptionRequest:
    task: dict[str, Any]  # without the audio: the route adds it
    response_format: str


def parse_transcription(form: Mapping[str, str], has_file: bool) -> TranscriptionRequest:
    path = "/v1/audio/transcriptions"
    check_params({**form, **({"file": None} if has_file else {})}, "transcription", path)
    if not has_file:
        raise invalid("'file' is required: the audio, as a multipart file part", "file")
    model = find_model(form.get("model"), SPEECH_TO_TEXT, path)
    task: dict[str, Any] = {"model": model.name}
    for name in ("prompt", "language"):
        if form.get(name):
            task[name] = form[name]
    if form.get("verify") is not None:  # (an empty value is refused, naming it)
        task["verify"] = form["verify"]
    response_format = form.get("response_format") or "json"
    if response_format not in TRANSCRIPTION_FORMATS:
        raise invalid(f"'response_format' must be one of {', '.join(TRANSCRIPTION_FORMATS)}",
                      "response_format")
    return TranscriptionRequest(task, response_format)
