"""The worker protocol codec: round trips, and every bad frame -> ProtocolError."""
from __future__ import annotations

import json

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core import Usage
from engine.protocol import (
    SCHEMAS, TYPES, Error, Gpu, Hello, Progress, ProtocolError, Result, decode, encode,
)
from tests.strategies import coordinator_messages, garbage_frames, worker_messages


@given(worker_messages | coordinator_messages)
def test_every_message_round_trips(message):
    text = encode(message)
    assert json.loads(text)["type"] == {cls: name for name, cls in TYPES.items()}[type(message)]
    assert decode(text) == message


@settings(max_examples=400)
@given(garbage_frames)
def test_any_text_decodes_or_raises_protocol_error(text):
    try:
        message = decode(text)
    except ProtocolError as exc:
        assert str(exc)  # always says why
    else:
        assert decode(encode(message)) == message


def test_optional_fields_have_defaults():
    # decode fills absent optional fields from the class defaults
    for cls, schema in SCHEMAS.items():
        fields = {f.name: f for f in attrs.fields(cls)}
        for key, (_, required) in schema.items():
            assert key in fields, (cls, key)
            assert required or fields[key].default is not attrs.NOTHING, (cls, key)


@pytest.mark.parametrize("text, reason", [
    ("", "malformed JSON"),
    ("{", "malformed JSON"),
    ("[]", "must be a JSON object"),
    ('{"task_id": "t"}', "missing field 'type'"),
    ('{"type": 3}', "missing field 'type'"),
    ('{"type": "shout"}', "unknown message type 'shout'"),
    ('{"type": "accepted"}', "accepted: missing field 'task_id'"),
    ('{"type": "accepted", "task_id": ""}', "non-empty string"),
    ('{"type": "accepted", "task_id": 7}', "non-empty string"),
    ('{"type": "heartbeat", "running": [], "load": NaN}', "NaN is not valid JSON"),
    ('{"type": "heartbeat", "running": [], "load": -1}', "non-negative number"),
    ('{"type": "heartbeat", "running": [], "load": true}', "non-negative number"),
    ('{"type": "failed", "task_id": "t", "error": "x", "retryable": 1}', "true or false"),
    ('{"type": "hello", "protocol": 1, "token": "t", "gpu": {"name": "x"}, "models": [],'
     ' "slots": 1}', "gpu.vram_gb"),
    ('{"type": "hello", "protocol": 1.5, "token": "t", "gpu": {"name": "x", "vram_gb": 1},'
     ' "models": [], "slots": 1}', "an integer"),
    ('{"type": "result", "task_id": "t", "output": "x", "usage": {}}', "usage.seconds"),
    ('{"type": "result", "task_id": "t", "output": "x", "usage": {"seconds": 1, '
     '"tokens": -3}}', "must be non-negative"),
    ("[" * 100_000 + "]" * 100_000, "malformed JSON"),
])
def test_bad_frames_say_what_is_wrong(text, reason):
    with pytest.raises(ProtocolError, match=None) as info:
        decode(text)
    assert reason in str(info.value)


def test_frame_size_limit_counts_utf8_bytes():
    frame = encode(Error("é" * 600))  # 1200+ bytes, 600+ characters
    assert decode(frame, max_bytes=2048) == Error("é" * 600)
    with pytest.raises(ProtocolError, match="frame too large"):
        decode(frame, max_bytes=1000)


def test_progress_keeps_partial_output_flat_and_cannot_forge_its_type():
    message = Progress("t", {"tokens": ["a", "b"], "index": 1, "type": "result"})
    frame = json.loads(encode(message))
    assert frame == {"type": "progress", "task_id": "t", "tokens": ["a", "b"], "index": 1}
    assert decode(encode(message)) == Progress("t", {"tokens": ["a", "b"], "index": 1})


def test_unknown_fields_are_ignored_for_forward_compatibility():
    text = ('{"type": "result", "task_id": "t", "output": "hi", "usage": {"seconds": 0.5, '
            '"tokens": 2, "joules": 9}, "finish_reason": "stop", "future": [1]}')
    assert decode(text) == Result("t", "hi", Usage(seconds=0.5, tokens=2), "stop")


@given(st.text(max_size=30), st.floats(0, 100))
def test_hello_defaults(name, vram):
    hello = decode(json.dumps({"type": "hello", "protocol": 1, "token": "k",
                               "gpu": {"name": name, "vram_gb": vram},
                               "models": ["llama2"], "slots": 2}))
    assert hello == Hello("k", Gpu(name, vram), ("llama2",), 2)
    assert hello.price_per_hour is None and hello.region == "" and hello.loaded == ()
