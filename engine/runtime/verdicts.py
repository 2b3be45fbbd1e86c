# A validator's verdict, as the `output` of its `result` frame for a verification
# job (engine/protocol/codec.py, `assign` with `verify`):
#
#     {"passed": bool, "score": number, "detail": str}
#
# Rules: pure; `parse_verdict` returns the verdict's values or, for anything else
# (another type, a missing or wrong-typed field, a non-finite score), a string
# saying what is wrong - the coordinator answers that as the validator's protocol
# fault. Extra fields are ignored (a newer validator may add some).
from __future__ import annotations

import math
from typing import Any, Mapping


def parse_verdict(output: Any) -> tuple[bool, float, str] | str:
    """(passed, score, detail), or what is wrong with `output` as a verdict."""
    if not isinstance(output, Mapping):
        return f"a verdict must be an object {{passed, score, detail}}, not {type(output).__name__}"
    passed = output.get("passed")
    if not isinstance(passed, bool):
        return "verdict.passed must be true or false"
    score = output.get("score")
    if (not isinstance(score, (int, float)) or isinstance(score, bool)
            or not math.isfinite(score)):
        return "verdict.score must be a finite number"
    detail = output.get("detail", "")
    if not isinstance(detail, str):
        return "verdict.detail must be a string"
    return passed, float(score), detail[:1000]


__all__ = ["parse_verdict"]
