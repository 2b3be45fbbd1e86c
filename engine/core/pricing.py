# Pricing: what a task is quoted before it runs and charged after.
#
# Theory: a node sells GPU time at its price per hour. A task's base cost is
# price/3600 * GPU seconds; the client pays base cost * a multiplier that a pricing
# policy sets from the task's priority and, for dynamic pricing, the network's load
# at the moment the task is placed (the multiplier is fixed then, so the actual
# charge uses the same surge as the running task saw). A quote estimates the GPU
# seconds from the catalog; the actual charge uses the seconds the node measured.
# Cold model loads are the network's cost, never billed to the client.
#
# The charge bound: a node reports its own GPU seconds, so with
# SchedulerConfig.charge_cap_factor set (the live coordinator sets 2.0) a charge
# never exceeds max(factor x quote, quote + allowance), where the quote is the
# cost the task was quoted on the node it ran on when it was placed (that node's
# price x the service time its class promises x the multiplier) and the
# allowance is SchedulerConfig.charge_cap_allowance ($0.01). Above it the charge
# is the bound, and the Complete decision says `clamped`. (`charge_cap` below.)
#
# Rules: pure functions and frozen values; policies listed by name in PRICING.
from __future__ import annotations

from typing import Callable, Mapping, Protocol

import attrs

from .events import Priority

PRIORITY_MULTIPLIER: Mapping[Priority, float] = {
    Priority.STANDARD: 1.0,
    Priority.HIGH: 1.5,
    Priority.CRITICAL: 2.0,
}


class PricingPolicy(Protocol):
    @property
    def name(self) -> str: ...

    def multiplier(self, priority: Priority, utilization: float) -> float: ...


@attrs.frozen
class StaticPricing:
    """The priority multiplier alone."""

    name: str = "static"

    def multiplier(self, priority: Priority, utilization: float) -> float:
        return PRIORITY_MULTIPLIER[priority]


@attrs.frozen
class DynamicPricing:
    """Surge pricing: above `threshold` utilization the multiplier rises linearly to
    `max_surge` times the static one at full load."""

    name: str = "dynamic"
    threshold: float = 0.7
    max_surge: float = 2.0

    def multiplier(self, priority: Priority, utilization: float) -> float:
        over = max(0.0, min(1.0, utilization) - self.threshold) / (1.0 - self.threshold)
        return PRIORITY_MULTIPLIER[priority] * (1.0 + (self.max_surge - 1.0) * over)


PRICING: dict[str, Callable[[], PricingPolicy]] = {
    "static": StaticPricing,
    "dynamic": DynamicPricing,
}


def make_pricing(name: str) -> PricingPolicy:
    factory = PRICING.get(name)
    if factory is None:
        raise ValueError(f"unknown pricing policy {name!r} (known: {', '.join(PRICING)})")
    return factory()


def charge(price_per_hour: float, gpu_seconds: float, multiplier: float) -> float:
    """Dollars for `gpu_seconds` of a node priced `price_per_hour`."""
    return price_per_hour / 3600.0 * gpu_seconds * multiplier


def charge_cap(quoted: float, factor: float, allowance: float) -> float:
    """The most a task quoted `quoted` dollars may be charged (see the top comment)."""
    return max(factor * quoted, quoted + allowance)


def savings_pct(cost: float, reference: float) -> float:
    """How much cheaper `cost` is than `reference`, in percent (0 when no reference)."""
    if reference <= 0:
        return 0.0
    return round(100.0 * (1.0 - cost / reference), 1)


@attrs.frozen
class Quote:
    """The API reference's `cost` object and `estimated_time`, before the run."""

    estimated_cost: float  # dollars
    estimated_seconds: float  # queue wait + network + cold load + service
    openai_cost: float  # the same work at OpenAI's list price
    savings_pct: float
    gpu: str  # the GPU class expected to run it
    node_id: str | None  # the node expected to run it, if one is online
    region: str = ""
    location: str = ""
