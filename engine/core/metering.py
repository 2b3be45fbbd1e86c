# Metering: what a node may report about a task it ran, and how long it may take.
#
# A node measures its own work (the trust issue replaces that with verified
# metering); until then the coordinator bounds what it believes by what is
# physically possible for the task, and refuses the rest as a protocol error:
#
#   usage_problem(spec, usage, elapsed)  -> "" or why the usage is impossible
#     - every figure is finite and non-negative;
#     - the figures the task's kind is priced by (TaskKind.usage_fields) are held to
#       the task's size, the others only to UNMETERED_CAP:
#     - counts: tokens <= output_tokens (the task's max_tokens) x COUNT_SLACK +
#       COUNT_ALLOWANCE, and the same for steps and audio_seconds; prompt_tokens <=
#       prompt_tokens (the API's ~4 characters a token estimate) x PROMPT_SLACK +
#       PROMPT_ALLOWANCE (a chat template's preamble) - a prompt never tokenizes to
#       more tokens than its UTF-8 bytes, at most 4 a character, so 16 x the estimate;
#     - seconds <= elapsed (the time since the coordinator assigned the run) x
#       (1 + SECONDS_SLACK) + SECONDS_ALLOWANCE (5 s): a node cannot have been busy
#       longer than it has had the task.
#   run_bound(expected, pace, factor, floor) -> seconds a run may take before it is
#     taken back: max(factor x expected x pace, floor), where `expected` is the
#     service time the node's class promises (network + cold load + work / rate)
#     and `pace` the node's measured slowness (elapsed / expected of its past runs,
#     a moving average, clamped to [1, factor]).
#
#
# Metered usage: what a task is billed and shown by never rests on the node's word.
#   metered_usage(spec, reported, elapsed, counts) -> (usage, metered_by)
#     - the figures a kind is priced by (TaskKind.usage_fields) come from the
#       coordinator: `steps` and `audio_seconds` from the task itself (the API reads
#       steps from its parameters and measures audio seconds from the decoded
#       input), `tokens` from its own count of the result's text with the model's
#       tokenizer (`counts`; the runtime's meter finds the tokenizer by the weights
#       the node announced), and `prompt_tokens` at most its count of the prompt +
#       PROMPT_ALLOWANCE (a chat template's preamble, which only the node sees);
#     - with no tokenizer for the node's weights (counts None) tokens and prompt
#       tokens are the node's, only bounded as usage_problem bounds them, and
#       `metered_by` says so: METERED_BY_NODE, else METERED_BY_COORDINATOR;
#     - seconds: at most max(elapsed, `speed_bound`), where elapsed is the run as
#       the coordinator timed it itself and speed_bound what the node's measured
#       speed allows for the task (speed.speed_seconds: the work at its measured
#       pace, x SPEED_SLACK); a node not measured yet for the model (speed_bound
#       None) is held only by usage_problem (elapsed + SECONDS_ALLOWANCE). An honest
#       node's seconds, inside our timing, are never cut. The charge bound (below)
#       then holds the charge to 2 x the quote of the node's measured class.
#   count_problem(reported, counts) -> "" or why the node's own token count cannot
#     be its output's: more than COUNT_MISMATCH x the coordinator's count +
#     COUNT_ALLOWANCE (an honest count differs by special tokens that the text
#     does not show and by re-tokenization, not by a factor). Like an impossible
#     usage, a protocol error: the run is a fault of its node, never paid.
#
# The charge bound (enforced by the Scheduler's Complete decision when
# SchedulerConfig.charge_cap_factor is set) lives in pricing.py with the price.
#
# Rules: pure functions of their arguments; the limits are module constants so
# that the rule is stated once, here.
from __future__ import annotations

import math

import attrs

from .catalog import MODELS
from .events import TaskSpec, Usage

COUNT_SLACK = 1.1  # a runner may overshoot a limit by a little (a final token)
COUNT_ALLOWANCE = 16  # absolute room on every count (special tokens, rounding)
PROMPT_SLACK = 16.0  # prompt tokens over the API's estimate (see above)
# absolute room on prompt tokens: the model's chat template wraps the prompt in its
# own system preamble and role markers (SmolLM2's: ~30 tokens)
PROMPT_ALLOWANCE = 512
SECONDS_SLACK = 0.01  # relative: two clocks measuring one interval
# absolute: this bound catches impossible claims (an hour in a second, 1e308 s), not
# imprecision; the charge bound (pricing.py) caps what any smaller overstatement costs.
SECONDS_ALLOWANCE = 5.0
# A figure the task's kind is not priced by (kinds.TaskKind.usage_fields: a
# transcript's tokens, an image's CLIP tokens) is bounded by this alone.
UNMETERED_CAP = 10_000_000
PACE_WEIGHT = 0.2  # weight of the latest run in a node's measured pace
COUNT_MISMATCH = 2.0  # a node's token count over the coordinator's (count_problem)
SPEED_SLACK = 1.25  # seconds a node may bill beyond our timing: its measured pace x this
METERED_BY_COORDINATOR = "coordinator"  # every priced figure counted by the coordinator
METERED_BY_NODE = "node, bounded"  # the node's counts, held to the task's size


@attrs.frozen
class Counts:
    """What the coordinator counted itself of a text task, with the model's tokenizer:
    the result's tokens and the prompt's (without any chat template)."""

    output_tokens: int
    prompt_tokens: int


def _over(value: float, limit: float, slack: float, allowance: float) -> bool:
    return value > limit * slack + allowance


# The usage figures a report carries, and for each figure a kind may be priced by:
# (the spec's field that bounds it, slack, allowance, the bound's name in messages).
USAGE_FIGURES = tuple(field.name for field in attrs.fields(Usage))
_BOUNDS = (("tokens", "output_tokens", COUNT_SLACK, COUNT_ALLOWANCE, "max_tokens"),
           ("prompt_tokens", "prompt_tokens", PROMPT_SLACK, PROMPT_ALLOWANCE, "prompt estimate"),
           ("steps", "steps", COUNT_SLACK, COUNT_ALLOWANCE, "steps"),
           ("audio_seconds", "audio_seconds", COUNT_SLACK, COUNT_ALLOWANCE, "audio_seconds"))


def usage_problem(spec: TaskSpec, usage: Usage, elapsed: float) -> str:
    """Why `usage`, reported for a run of `spec` that the node has had for `elapsed`
    seconds, is impossible; "" when it is plausible."""
    for name in USAGE_FIGURES:
        value = getattr(usage, name)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            return f"usage.{name} must be a finite non-negative number, got {value!r}"
    model = MODELS.get(spec.model)
    metered = model.kind.usage_fields if model is not None else ()
    for name, bound, slack, allowance, label in _BOUNDS:
        value = getattr(usage, name)
        if name not in metered:  # not what the task is priced by (e.g. a transcript's
            if value > UNMETERED_CAP:  # tokens): only kept within reason
                return f"usage.{name} {value:g} is beyond any task's ({UNMETERED_CAP:g})"
            continue
        limit = getattr(spec, bound)
        if _over(value, limit, slack, allowance):
            return (f"usage.{name} {value:g} is impossible for this task "
                    f"(its {label} is {limit:g})")
    if _over(usage.seconds, elapsed, 1.0 + SECONDS_SLACK, SECONDS_ALLOWANCE):
        return (f"usage.seconds {usage.seconds:g} is longer than the node has had the task "
                f"({elapsed:.3g} s)")
    return ""


def metered_usage(spec: TaskSpec, reported: Usage, elapsed: float, counts: Counts | None,
                  speed_bound: float | None = None) -> tuple[Usage, str]:
    """The usage a run of `spec` is billed and shown by (see the top comment), and
    which way it was metered. `reported` has passed usage_problem."""
    model = MODELS.get(spec.model)
    metered = model.kind.usage_fields if model is not None else ()
    seconds = reported.seconds
    if speed_bound is not None:
        seconds = min(seconds, max(elapsed, speed_bound * SPEED_SLACK))
    tokens, prompt_tokens = reported.tokens, reported.prompt_tokens
    by = METERED_BY_COORDINATOR
    if "tokens" in metered:
        if counts is None:
            by = METERED_BY_NODE
        else:
            tokens = counts.output_tokens
            prompt_tokens = min(prompt_tokens, counts.prompt_tokens + PROMPT_ALLOWANCE)
    return Usage(seconds, tokens, prompt_tokens,
                 spec.steps if "steps" in metered else reported.steps,
                 spec.audio_seconds if "audio_seconds" in metered else reported.audio_seconds), by


def count_problem(reported: Usage, counts: Counts | None) -> str:
    """Why the node's token count cannot be that of the output it sent; "" when it
    can (or when the coordinator has no count of its own)."""
    if counts is not None and _over(reported.tokens, counts.output_tokens, COUNT_MISMATCH,
                                    COUNT_ALLOWANCE):
        return (f"usage.tokens {reported.tokens:g} is more than the output holds "
                f"({counts.output_tokens} tokens by the model's tokenizer)")
    return ""


def run_bound(expected: float, pace: float, factor: float, floor: float) -> float:
    """Seconds a run expected to take `expected` may take on a node of measured
    `pace` before it is taken back."""
    return max(factor * expected * min(max(pace, 1.0), factor), floor)


def next_pace(pace: float, expected: float, elapsed: float) -> float:
    """A node's measured pace after a run that took `elapsed` for `expected`."""
    if expected <= 0:
        return pace
    return (1.0 - PACE_WEIGHT) * pace + PACE_WEIGHT * (elapsed / expected)


__all__ = ["COUNT_ALLOWANCE", "COUNT_MISMATCH", "COUNT_SLACK", "Counts", "METERED_BY_COORDINATOR",
           "METERED_BY_NODE", "PROMPT_ALLOWANCE", "PROMPT_SLACK", "SECONDS_ALLOWANCE",
           "SECONDS_SLACK", "SPEED_SLACK", "UNMETERED_CAP", "count_problem", "metered_usage", "next_pace",
           "run_bound", "usage_problem"]
