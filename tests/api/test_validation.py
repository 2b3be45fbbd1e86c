"""Request validation, field by field (the route tests cover the HTTP side)."""
from __future__ import annotations

import pytest

from api.validation import (
    InvalidRequest, parse_json_object, parse_page, parse_signup, parse_task,
)
from engine.core import Priority


def test_task_defaults_follow_the_reference() -> None:
    task = parse_task({"prompt": "Hello world", "model": "llama2"})
    assert (task.model, task.priority, task.max_tokens) == ("llama2:7b", Priority.STANDARD, 256)
    assert task.params() == {"max_tokens": 256, "temperature": 0.0, "top_p": 1.0}
    image = parse_task({"prompt": "a cat", "model": "stable-diffusion", "priority": "critical"})
    assert (image.steps, image.priority, image.max_tokens) == (50, Priority.CRITICAL, 0)
    # speech: the audio is the task's input (its length is measured from it, never
    # taken from the client), the prompt is optional
    speech = parse_task({"model": "whisper", "audio": "UklGRg==", "language": "en"})
    assert speech.inputs() == {"audio": "UklGRg=="}
    assert speech.params() == {"language": "en", "max_tokens": 448} and speech.prompt == ""
    for body in ({"model": "whisper"}, {"model": "whisper", "audio": "x", "audio_seconds": 3}):
        with pytest.raises(InvalidRequest, match="audio"):
            parse_task(body)


@pytest.mark.parametrize("body", [
    {"prompt": "x", "seed": -1}, {"prompt": "x", "seed": 2**63}, {"prompt": "x", "top_p": 1.5},
    {"prompt": "x", "temperature": 2.01}, {"prompt": "x", "steps": 151},
    {"prompt": "x", "audio_seconds": 0}, {"prompt": "x", "priority": None, "model": ["a"]},
])
def test_out_of_range_or_wrong_type_fields_are_refused(body: dict) -> None:
    with pytest.raises(InvalidRequest):
        parse_task(body)


def test_json_bodies() -> None:
    assert parse_json_object(b'{"a": 1}') == {"a": 1}
    for body in (b"", b"  ", b"null", b"[1]", b"{", b"[" * 100_000):
        with pytest.raises(InvalidRequest):
            parse_json_object(body)


def test_signup_normalises_email_and_defaults() -> None:
    signup = parse_signup({"email": " Dev@Example.COM "})
    assert (signup.email, signup.type, signup.source) == ("dev@example.com", "developer", "direct")
    assert parse_signup({"email": "a@x.io", "source": "Product-Hunt"}).source == "product-hunt"


def test_pages() -> None:
    page = parse_page({})
    assert (page.limit, page.cursor, page.status) == (20, None, None)
    assert parse_page({"limit": "100", "cursor": "42", "status": "running"}).cursor == 42
    for args in ({"limit": "²"}, {"cursor": "-1"}, {"limit": "1e3"}):
        with pytest.raises(InvalidRequest):
            parse_page(args)
