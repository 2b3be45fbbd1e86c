"""The metering rules: what usage is possible for a task, and the execution bound."""
from __future__ import annotations

import math

import pytest

from engine.core import TaskSpec, Usage, usage_problem
from engine.core.metering import run_bound

TEXT = TaskSpec("t", "llama2:7b", prompt_tokens=10, output_tokens=8)
IMAGE = TaskSpec("i", "stable-diffusion", steps=30)


@pytest.mark.parametrize("spec, usage, elapsed", [
    (TEXT, Usage(0.5, tokens=8, prompt_tokens=12), 1.0),
    (TEXT, Usage(1.9, tokens=24), 1.0),  # within the slack and the allowance
    (IMAGE, Usage(3.0, steps=30), 3.0),
])
def test_plausible_usage_passes(spec, usage, elapsed):
    assert usage_problem(spec, usage, elapsed) == ""


@pytest.mark.parametrize("spec, usage, elapsed, says", [
    (TEXT, Usage(1e12, tokens=10 ** 12), 1e13, "usage.tokens"),
    (TEXT, Usage(1e308, tokens=8), 5.0, "usage.seconds"),
    (TEXT, Usage(3600.0, tokens=8), 10.0, "usage.seconds"),
    (TEXT, Usage(0.5, tokens=8, prompt_tokens=10 ** 6), 1.0, "usage.prompt_tokens"),
    (IMAGE, Usage(1.0, steps=10 ** 9), 5.0, "usage.steps"),
    (TEXT, Usage(-1.0, tokens=8), 5.0, "usage.seconds"),
    (TEXT, Usage(math.inf, tokens=8), 5.0, "usage.seconds"),
    (TEXT, Usage(math.nan, tokens=8), 5.0, "usage.seconds"),
])
def test_impossible_usage_is_named(spec, usage, elapsed, says):
    assert says in usage_problem(spec, usage, elapsed)


def test_the_execution_bound():
    assert run_bound(1.0, 1.0, 10.0, 60.0) == 60.0  # the floor
    assert run_bound(20.0, 1.0, 10.0, 60.0) == 200.0
    assert run_bound(20.0, 3.0, 10.0, 60.0) == 600.0  # a slow node measured slow
    assert run_bound(20.0, 50.0, 10.0, 60.0) == 2000.0  # pace clamped to the factor
    assert run_bound(20.0, 0.1, 10.0, 60.0) == 200.0  # never shorter than promised


SPEECH = TaskSpec("s", "whisper", audio_seconds=12.5)


def test_metered_usage_takes_counts_from_the_coordinator_and_seconds_from_its_clock():
    from engine.core.metering import (
        METERED_BY_COORDINATOR, PROMPT_ALLOWANCE, Counts, metered_usage,
    )
    from engine.core.metering import SPEED_SLACK
    reported = Usage(9.0, tokens=20, prompt_tokens=900)
    usage, by = metered_usage(TEXT, reported, 4.0, Counts(7, 10), speed_bound=2.0)
    assert by == METERED_BY_COORDINATOR
    assert usage == Usage(4.0, tokens=7, prompt_tokens=10 + PROMPT_ALLOWANCE)
    # beyond our timing by at most what its measured speed allows
    assert metered_usage(TEXT, reported, 4.0, None, 6.0)[0].seconds == 6.0 * SPEED_SLACK
    # not measured yet: usage_problem alone holds it (to elapsed + its allowance)
    assert metered_usage(TEXT, reported, 4.0, None)[0].seconds == 9.0
    honest, _ = metered_usage(TEXT, Usage(0.5, tokens=7, prompt_tokens=40), 1.0, Counts(7, 10))
    assert honest == Usage(0.5, tokens=7, prompt_tokens=40)  # an honest report is kept
    image, by = metered_usage(IMAGE, Usage(1.0, steps=45), 2.0, None)
    assert image.steps == 30 and by == METERED_BY_COORDINATOR
    speech, _ = metered_usage(SPEECH, Usage(1.0, tokens=3, audio_seconds=30.0), 2.0, None)
    assert speech.audio_seconds == 12.5 and speech.tokens == 3  # tokens: not what it is priced by


def test_without_a_tokenizer_the_node_s_counts_stand_and_say_so():
    from engine.core.metering import METERED_BY_NODE, metered_usage
    usage, by = metered_usage(TEXT, Usage(0.5, tokens=8, prompt_tokens=12), 1.0, None)
    assert by == METERED_BY_NODE and usage == Usage(0.5, tokens=8, prompt_tokens=12)


def test_a_token_count_beyond_the_output_is_a_problem():
    from engine.core.metering import COUNT_ALLOWANCE, COUNT_MISMATCH, Counts, count_problem
    limit = int(10 * COUNT_MISMATCH + COUNT_ALLOWANCE)
    assert count_problem(Usage(1.0, tokens=limit), Counts(10, 0)) == ""
    assert "usage.tokens" in count_problem(Usage(1.0, tokens=limit + 1), Counts(10, 0))
    assert count_problem(Usage(1.0, tokens=10 ** 6), None) == ""  # nothing to compare with
