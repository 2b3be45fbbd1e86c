# Measured speed: how fast a node's runs of a model really are, and the node class
# (index.NodeClass: quotes, placement, price) that this speed puts it in.
#
# Theory. The catalog says how fast a GPU class runs each model; a node only claims
# its GPU, and nothing checks a hello. The scheduler times every run itself (from
# the assignment to the result, on its own clock) and keeps, per node and model, a
# *pace*: the run's service time over the service time its claimed GPU's catalog
# rate promises for the task's work,
#     service = elapsed - region latency - (the model's load time, when it ran cold)
#     pace    = moving average of service / (work / catalog rate of the claimed GPU)
# by metering.next_pace, the rule of the node-wide pace of the execution bound; the
# node's first run of the model sets it (no prior pulls it towards the catalog). A
# run whose service is under MIN_SERVICE_SHARE of its elapsed time teaches nothing:
# the catalog's load time or the network swallowed it (a cold run of a model that
# loads faster than the catalog says), and it is not measured.
# The work is the task's as submitted (what a quote is asked for), so the pace also
# learns how much of its max_tokens a node's answers use. Its measured rate is
#     rate = catalog rate (claimed GPU) / pace        (work units per second)
# clamped to [catalog / MAX_PACE, catalog / MIN_PACE].
#
# With SchedulerConfig.measured_speed, a node's class for a model runs at its
# measured rate, so the quote (views.quote_task) and the scoring placement policies
# see the node that will run the task. The rate is rounded to eighth-octaves
# (RATE_STEPS_PER_OCTAVE) in the class key, so the number of classes stays bounded
# (one per rate step, not per node); rounding moves an estimate by at most ~4.4%.
#
# With SchedulerConfig.check_hardware, a node whose measured rate is below its
# claimed GPU's catalog rate by more than CLAIM_TOLERANCE contradicts its claim and
# is re-classed, for that model: to the fastest listed GPU class whose catalog rate
# is within CLAIM_TOLERANCE of the measured one (the class its speed matches), or to
# MEASURED_GPU when it is slower than every listed class. Its price for the model
# becomes min(its own price, the matched class's catalog price); for MEASURED_GPU,
# the slowest class's price scaled by measured / slowest rate, so that a unit of its
# work never costs more than on the slowest listed GPU. A re-classed node runs at its
# measured rate (whether or not measured_speed is on). Being faster than claimed is
# no contradiction. Speed can only tell apart classes whose rates differ by more than
# the tolerance (a text-generation "H100" that is an RTX 3090 is not caught: their
# decode rates are within 11%): the price rule applies only to a contradicted claim.
#
# Rules: pure functions of their arguments; the limits are module constants.
from __future__ import annotations

import math
from typing import Mapping

import attrs

from .catalog import GPU_CLASSES, default_price, gpu_rate
from .metering import next_pace

CLAIM_TOLERANCE = 2.0  # measured this many times slower than claimed: a contradiction
MEASURED_GPU = "measured"  # the class of a node slower than every listed GPU class
RATE_STEPS_PER_OCTAVE = 8  # rate rounding in class keys (eighth-octaves)
MIN_PACE, MAX_PACE = 1.0 / 64, 4096.0  # the measured pace is kept within these
MIN_SERVICE = 1e-3  # seconds: a run's service time is never taken as less
MIN_SERVICE_SHARE = 0.5  # of a run's elapsed time, for the run to be measured


@attrs.frozen
class ClassTerms:
    """What a node's class for one model shows: the GPU class it is taken for, its
    rate (work units per second), its price per hour, and `measured_rate`: the
    rounded measured rate that is part of its class key (0.0: the catalog's rate)."""

    gpu: str
    rate: float
    price_per_hour: float
    measured_rate: float = 0.0


@attrs.frozen
class MeasuredSpeed:
    """A node's measured speed for one model, as a status page shows it."""

    model: str
    rate: float  # work units per second, measured (unrounded)
    pace: float  # measured / catalog service time of its claimed GPU
    gpu: str  # the GPU class it is taken for (its claim unless re-classed)
    price_per_hour: float  # its price for the model (lowered when re-classed)
    quoted_rate: float  # the rate its class is quoted and placed at (rounded)
    reclassed: bool  # its measured speed contradicted its claimed (listed) GPU


def measured_pace(pace: float | None, work: float, catalog_rate: float,
                  service: float) -> float:
    """A node's pace for a model after a run of `work` whose service took `service`
    seconds (None: its first run of the model)."""
    expected = work / catalog_rate if catalog_rate > 0 else 0.0
    if expected <= 0:
        return 1.0 if pace is None else pace
    ratio = max(service, MIN_SERVICE) / expected
    new = ratio if pace is None else next_pace(pace, expected, max(service, MIN_SERVICE))
    return min(max(new, MIN_PACE), MAX_PACE)


def service_seconds(elapsed: float, latency: float, cold_seconds: float) -> float | None:
    """The work part of a run the scheduler timed at `elapsed`, or None when it is
    too small a part to measure the node by (see the top comment)."""
    service = elapsed - latency - cold_seconds
    return service if service >= MIN_SERVICE_SHARE * elapsed and service > 0 else None


def speed_seconds(claimed_gpu: str, model: str, work: float, pace: float) -> float:
    """Seconds of service a node of measured `pace` needs for `work` of `model`."""
    return work * pace / gpu_rate(claimed_gpu, model)


def round_rate(rate: float) -> float:
    """`rate` rounded to a quarter-octave step (class keys; see the top comment)."""
    steps = RATE_STEPS_PER_OCTAVE
    return float(2.0 ** (round(steps * math.log2(rate)) / steps))


def matched_gpu(model: str, rate: float) -> str:
    """The fastest listed GPU class whose catalog rate for `model` is within
    CLAIM_TOLERANCE of `rate`, or MEASURED_GPU when `rate` is below all of them."""
    matching = [(g.rates[model], name) for name, g in GPU_CLASSES.items()
                if g.rates[model] <= rate * CLAIM_TOLERANCE]
    return max(matching)[1] if matching else MEASURED_GPU


def claim_contradicted(claimed_gpu: str, model: str, rate: float) -> bool:
    return rate * CLAIM_TOLERANCE < gpu_rate(claimed_gpu, model)


def class_terms(claimed_gpu: str, model: str, price_per_hour: float, pace: float | None,
                measured_speed: bool, check_hardware: bool) -> ClassTerms:
    """The terms of a node's class for `model` (see the top comment); `pace` None:
    not measured yet, the claim stands."""
    catalog = gpu_rate(claimed_gpu, model)
    if pace is None or not (measured_speed or check_hardware):
        return ClassTerms(claimed_gpu, catalog, price_per_hour)
    rate = round_rate(catalog / pace)
    if check_hardware and claim_contradicted(claimed_gpu, model, catalog / pace):
        gpu = matched_gpu(model, catalog / pace)
        if gpu == MEASURED_GPU:
            slowest = min(GPU_CLASSES.values(), key=lambda g: g.rates[model])
            cap = slowest.price_per_hour * rate / slowest.rates[model]
        else:
            cap = default_price(gpu)
        return ClassTerms(gpu, rate, min(price_per_hour, cap), rate)
    if not measured_speed:
        return ClassTerms(claimed_gpu, catalog, price_per_hour)
    return ClassTerms(claimed_gpu, rate, price_per_hour, rate)


def measured_speeds(claimed_gpu: str, price_per_hour: float, paces: Mapping[str, float],
                    measured_speed: bool, check_hardware: bool) -> tuple[MeasuredSpeed, ...]:
    """A node's measured speeds, per model it has run (in model order)."""
    out = []
    for model in sorted(paces):
        pace = paces[model]
        terms = class_terms(claimed_gpu, model, price_per_hour, pace, measured_speed,
                            check_hardware)
        # a claim outside the catalog ("cpu") is taken as the slowest class: moving
        # it to MEASURED_GPU is no contradiction of what it said
        reclassed = claimed_gpu in GPU_CLASSES and terms.gpu != claimed_gpu
        out.append(MeasuredSpeed(model, gpu_rate(claimed_gpu, model) / pace, pace, terms.gpu,
                                 terms.price_per_hour, terms.rate, reclassed))
    return tuple(out)


__all__ = ["CLAIM_TOLERANCE", "ClassTerms", "MAX_PACE", "MEASURED_GPU", "MIN_PACE",
           "MIN_SERVICE_SHARE",
           "MeasuredSpeed", "RATE_STEPS_PER_OCTAVE", "claim_contradicted", "class_terms",
           "matched_gpu", "measured_pace", "measured_speeds", "round_rate", "service_seconds",
           "speed_seconds"]
