"""A validator's verdict as its result's output (engine/runtime/verdicts.py)."""
from __future__ import annotations

import math

import pytest

from engine.runtime.verdicts import parse_verdict


def test_a_verdict_is_read():
    assert parse_verdict({"passed": True, "score": 0.97, "detail": "ok"}) == (True, 0.97, "ok")
    assert parse_verdict({"passed": False, "score": 0, "extra": 1}) == (False, 0.0, "")


@pytest.mark.parametrize("output, says", [
    ("looks fine", "an object"),
    (None, "an object"),
    ({"score": 1.0}, "passed"),
    ({"passed": 1, "score": 1.0}, "passed"),
    ({"passed": True}, "score"),
    ({"passed": True, "score": True}, "score"),
    ({"passed": True, "score": math.inf}, "score"),
    ({"passed": True, "score": 1.0, "detail": 5}, "detail"),
])
def test_anything_else_says_what_is_wrong(output, says):
    problem = parse_verdict(output)
    assert isinstance(problem, str) and says in problem
