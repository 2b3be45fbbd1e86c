# Workloads: what arrives, when, and how big it is.
#
# Theory. A workload is an arrival process (when tasks come) plus size distributions
# (how much work each task carries). Every process is a generator of arrival times
# in seconds from the start of the run, drawn from its own numpy Generator, so the
# arrivals of a workload depend only on (scenario, seed, workload index): every policy
# of a comparison sees exactly the same tasks (common random numbers), which is what
# makes a side-by-side comparison fair and its differences small-variance.
#
# Processes:
# - Poisson(rate): exponential gaps of mean 1/rate.
# - OnOff (bursty): a two-state Markov-modulated Poisson process; "on" periods of
#   exponential length `mean_on` at `rate`, "off" periods of length `mean_off` at
#   `off_rate` (0 by default: silence between bursts).
# - Mmpp: the general cyclic MMPP: state i lasts Exp(mean_holding[i]) with Poisson
#   arrivals at rates[i], then state i+1 (mod n).
# - Diurnal: a non-homogeneous Poisson process of rate
#   rate * (1 + amplitude * cos(2 pi (t - peak) / period)), drawn by thinning
#   (Lewis & Shedler 1979): candidates at the peak rate, kept with probability
#   rate(t) / peak rate.
# - Recorded: the submissions of a live coordinator's journal, exactly as they came.
# - TraceReplay: the rows of a CSV trace (Azure LLM inference format,
#   `TIMESTAMP,ContextTokens,GeneratedTokens`) replayed as they are: offsets from the
#   first row, times `time_scale`, starting `start` seconds into the trace; the
#   token counts of each row become the task's prompt and output tokens.
#
# Random numbers come from numpy Generators in blocks of BLOCK draws (`draws`): a
# draw then costs a list iteration instead of a Python-level sampling call, which
# matters at a million tasks.
#
# Rules: pure functions of their Generator; no clocks, no files except `load_trace`.
from __future__ import annotations

import csv
import datetime
import itertools
import math
from pathlib import Path
from typing import Callable, Iterator

import attrs
import numpy as np

from engine.core import TaskSpec

BLOCK = 4096
Draws = Iterator[float]


def draws(sample: Callable[[int], np.ndarray]) -> Draws:
    """An endless stream of floats drawn `BLOCK` at a time by `sample(n)`."""
    while True:
        yield from sample(BLOCK).tolist()


class TraceError(ValueError):
    """A trace file that cannot be read; the message names the file and the line."""


# ---- size distributions -----------------------------------------------------------

# kind -> the parameters it needs, in order (validated by scenario.py).
DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "constant": ("value",),
    "exponential": ("mean",),
    "uniform": ("low", "high"),
    "normal": ("mean", "sd"),
    "lognormal": ("median", "sigma"),
    "gamma": ("mean", "cv"),
}


@attrs.frozen
class Distribution:
    """A non-negative random quantity: `kind` is a key of DISTRIBUTIONS."""

    kind: str
    params: tuple[float, ...]

    @classmethod
    def constant(cls, value: float) -> Distribution:
        return cls("constant", (float(value),))

    def stream(self, gen: np.random.Generator) -> Draws:
        p = self.params
        if self.kind == "constant":
            return itertools.repeat(p[0])
        if self.kind == "exponential":
            return draws(lambda n: gen.exponential(p[0], n))
        if self.kind == "uniform":
            return draws(lambda n: gen.uniform(p[0], p[1], n))
        if self.kind == "normal":
            return draws(lambda n: np.maximum(gen.normal(p[0], p[1], n), 0.0))
        if self.kind == "lognormal":
            return draws(lambda n: gen.lognormal(math.log(p[0]), p[1], n))
        shape = 1.0 / (p[1] * p[1])  # gamma: cv = 1/sqrt(shape)
        return draws(lambda n: gen.gamma(shape, p[0] / shape, n))


def lognormal_noise(cv: float, gen: np.random.Generator) -> Draws:
    """Multiplicative noise of mean 1 and coefficient of variation `cv`."""
    if cv <= 0:
        return itertools.repeat(1.0)
    sigma = math.sqrt(math.log1p(cv * cv))
    return draws(lambda n: gen.lognormal(-sigma * sigma / 2.0, sigma, n))


# ---- arrival processes ------------------------------------------------------------


@attrs.frozen
class Poisson:
    rate: float  # tasks per second

    def times(self, gen: np.random.Generator, horizon: float) -> Iterator[float]:
        t = 0.0
        while True:
            block = (t + np.cumsum(gen.exponential(1.0 / self.rate, BLOCK))).tolist()
            if block[-1] >= horizon:
                yield from itertools.takewhile(lambda x: x < horizon, block)
                return
            yield from block
            t = block[-1]


@attrs.frozen
class Mmpp:
    """Cyclic Markov-modulated Poisson process; OnOff is its two-state case."""

    rates: tuple[float, ...]  # tasks per second in each state
    mean_holding: tuple[float, ...]  # seconds, mean time in each state

    def times(self, gen: np.random.Generator, horizon: float) -> Iterator[float]:
        unit = draws(gen.standard_exponential)
        t, state = 0.0, 0
        state_end = next(unit) * self.mean_holding[0]
        while t < horizon:
            rate = self.rates[state]
            nxt = t + next(unit) / rate if rate > 0 else math.inf
            if nxt < state_end:
                t = nxt
                if t < horizon:
                    yield t
                continue
            # Memoryless: at a state change the next arrival is drawn afresh.
            t = state_end
            state = (state + 1) % len(self.rates)
            state_end = t + next(unit) * self.mean_holding[state]


def on_off(rate: float, mean_on: float, mean_off: float, off_rate: float = 0.0) -> Mmpp:
    return Mmpp((rate, off_rate), (mean_on, mean_off))


@attrs.frozen
class Diurnal:
    rate: float  # mean tasks per second over a period
    amplitude: float  # 0..1: relative swing around the mean
    period: float = 86400.0  # seconds
    peak: float = 50400.0  # seconds into the period when the rate peaks (14:00)

    def rate_at(self, t: float) -> float:
        return self.rate * (1.0 + self.amplitude * math.cos(
            2.0 * math.pi * (t - self.peak) / self.period))

    def times(self, gen: np.random.Generator, horizon: float) -> Iterator[float]:
        top = self.rate * (1.0 + self.amplitude)
        unit, uniform = draws(gen.standard_exponential), draws(gen.random)
        t = 0.0
        while True:
            t += next(unit) / top
            if t >= horizon:
                return
            if next(uniform) * top <= self.rate_at(t):
                yield t


@attrs.frozen(eq=False)
class Trace:
    """A parsed trace: offsets (seconds from its first row) and token counts."""

    path: Path
    offsets: tuple[float, ...]
    prompt_tokens: tuple[int, ...]
    output_tokens: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.offsets)


@attrs.frozen
class TraceReplay:
    trace: Trace
    time_scale: float = 1.0  # trace seconds are multiplied by this (0.5: twice as fast)
    start: float = 0.0  # trace seconds skipped at its beginning

    def rows(self, horizon: float) -> Iterator[tuple[float, int, int]]:
        """(arrival time, prompt tokens, output tokens) of each replayed row."""
        trace, scale, start = self.trace, self.time_scale, self.start
        for offset, prompt, output in zip(trace.offsets, trace.prompt_tokens,
                                          trace.output_tokens):
            if offset < start:
                continue
            t = (offset - start) * scale
            if t >= horizon:
                return
            yield t, prompt, output


@attrs.frozen(eq=False)
class Recorded:
    """Tasks as a live coordinator received them (a journal replay, see replay.py):
    (arrival time, spec, work) in time order, where `work` is what the task measured
    on its node, in the work units of its model (so its service time on another GPU
    class scales with that class's rate), and the clients' cancellations as
    (time, task id)."""

    tasks: tuple[tuple[float, TaskSpec, float], ...]
    cancellations: tuple[tuple[float, str], ...] = ()


Arrival = Poisson | Mmpp | Diurnal | TraceReplay | Recorded


def _timestamp(text: str) -> tuple[int, float]:
    """(day ordinal, seconds into the day) of 'YYYY-MM-DD HH:MM:SS[.fraction]' (any
    number of digits). Kept apart so that offsets keep every sub-second digit."""
    date_part, _, time_part = text.strip().partition(" ")
    if not time_part:
        date_part, _, time_part = text.strip().partition("T")
    day = datetime.date.fromisoformat(date_part).toordinal()
    hours, minutes, seconds = time_part.split(":")
    return day, int(hours) * 3600.0 + int(minutes) * 60.0 + float(seconds)


TRACE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def load_trace(path: Path) -> Trace:
    """Parse an Azure-format trace. Rows must be in time order (the published
    traces are); offsets are exact to the trace's sub-second digits."""
    offsets: list[float] = []
    prompts: list[int] = []
    outputs: list[int] = []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header[:3]) != TRACE_COLUMNS:
            raise TraceError(f"{path}: line 1: expected the header {','.join(TRACE_COLUMNS)}")
        first = None
        previous = -math.inf
        for line, row in enumerate(reader, start=2):
            try:
                day, seconds = _timestamp(row[0])
                prompt, output = int(row[1]), int(row[2])
            except (ValueError, IndexError):
                raise TraceError(
                    f"{path}: line {line}: expected TIMESTAMP,ContextTokens,GeneratedTokens, "
                    f"got {','.join(row)!r}") from None
            first = (day, seconds) if first is None else first
            offset = (day - first[0]) * 86400.0 + (seconds - first[1])
            if offset < previous:
                raise TraceError(f"{path}: line {line}: timestamps must not go backwards")
            previous = offset
            offsets.append(offset)
            prompts.append(prompt)
            outputs.append(output)
    return Trace(path, tuple(offsets), tuple(prompts), tuple(outputs))
