"""What the codec refuses so that nothing unstorable gets past it: text with a lone
surrogate anywhere in a frame, integers beyond 64 bits; the refusal names the task
the frame was about. And `error.retry_after` round-trips."""
from __future__ import annotations

import pytest

from engine.protocol import INT_MAX, INT_MIN, Error, ProtocolError, Result, decode, encode

USAGE = '"usage":{"seconds":0.5,"tokens":3}'


def result(output: str, usage: str = USAGE, task_id: str = "t1") -> str:
    return f'{{"type":"result","task_id":"{task_id}","output":{output},{usage}}}'


@pytest.mark.parametrize("output", ['"\\ud800"', '"ok \\udfff"', '["a", {"k": "\\udbff!"}]',
                                    '{"\\ud834": 1}'])
def test_a_lone_surrogate_anywhere_is_refused_naming_the_task(output):
    with pytest.raises(ProtocolError, match="surrogate") as caught:
        decode(result(output))
    assert caught.value.task_id == "t1" and caught.value.frame_type == "result"


def test_a_surrogate_pair_is_one_character_and_fine():
    message = decode(result('"\\ud83d\\ude00 \\\\ud800"'))  # an emoji; an escaped backslash
    assert isinstance(message, Result) and message.output == "\U0001F600 \\ud800"


@pytest.mark.parametrize("tokens, ok", [(INT_MAX, True), (INT_MAX + 1, False),
                                        (10 ** 40, False)])
def test_usage_counts_must_fit_in_64_bits(tokens, ok):
    text = result('"x"', f'"usage":{{"seconds":1,"tokens":{tokens}}}')
    if ok:
        assert decode(text).usage.tokens == tokens
    else:
        with pytest.raises(ProtocolError, match="64-bit") as caught:
            decode(text)
        assert caught.value.task_id == "t1"


def test_integers_in_output_and_other_fields_must_fit_too():
    with pytest.raises(ProtocolError, match="64 bits"):
        decode(result(str(INT_MIN - 1)))
    with pytest.raises(ProtocolError, match="64-bit"):
        decode('{"type":"hello","protocol":1,"token":"k","gpu":{"name":"x","vram_gb":1},'
               f'"models":["llama2"],"slots":{2 ** 64}}}')


def test_a_refused_frame_without_a_valid_task_id_names_none():
    with pytest.raises(ProtocolError) as caught:
        decode('{"type":"result","task_id":"","output":"\\ud800",' + USAGE + '}')
    assert caught.value.task_id is None


def test_error_carries_retry_after():
    frame = Error("slow down", True, 2.5)
    assert decode(encode(frame)) == frame
    assert decode('{"type":"error","message":"m"}') == Error("m", True, None)
