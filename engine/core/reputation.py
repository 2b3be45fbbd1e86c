# Reputation: what verified outcomes say about a node, as one explicit formula.
#
# Theory. Each verification of a node's result is a Bernoulli trial: it passes or
# fails. With a uniform prior Beta(1, 1) over the node's probability of producing a
# good result, after `passed` passes and `failed` failures the posterior is
# Beta(1 + passed, 1 + failed), and the node's reputation is its mean:
#
#     score = (1 + passed) / (2 + passed + failed)        (0.5 for a newcomer)
#
# From the score and the count of verified results follow three things
# (TrustPolicy, verification.py, holds the constants):
#   sampling rate   a node on probation (fewer than `probation` verified results) has
#                   every result verified (rate 1); after that
#                       rate = min(1, max(rate_floor, rate_gain * (1 - score)))
#                   so a node's results are checked less as it earns trust, never
#                   less than rate_floor, and more again after a failure.
#   quarantine      after a failure, a node whose score is below `quarantine_below`
#                   is quarantined: it gets no more tasks (a newcomer whose first
#                   verified result fails: 1/3 < 0.5). Quarantine lasts while the
#                   coordinator remembers the node id (a reconnect does not lift it).
#   validator       a node may verify others' results when the operator trusts it,
#                   or when it has at least `validator_after` verified results and a
#                   score of at least `validator_score` and is not quarantined.
#
# A fresh identity starts on probation, so a quarantined adversary that comes back
# under a new node id has every result verified again until it earns trust: a new
# name buys it nothing (the Sybil case of DESIGN.md's threat model).
#
# Rules: pure values and arithmetic, O(1) per call; the table grows by one entry per
# node id ever verified (bounded by the fleet's identities).
from __future__ import annotations

import attrs


@attrs.define
class Reputation:
    """One node's verified outcomes."""

    passed: int = 0
    failed: int = 0
    quarantined: bool = False
    reason: str = ""  # why it was quarantined

    @property
    def verified(self) -> int:
        return self.passed + self.failed

    @property
    def score(self) -> float:
        """The Beta(1 + passed, 1 + failed) posterior mean."""
        return (1 + self.passed) / (2 + self.passed + self.failed)


def sampling_rate(rep: Reputation, probation: int, rate_floor: float,
                  rate_gain: float) -> float:
    """The probability that a result of a node with this reputation is verified
    (under the `sampled` mode)."""
    if rep.verified < probation:
        return 1.0
    return min(1.0, max(rate_floor, rate_gain * (1.0 - rep.score)))


class ReputationTable:
    """Reputation by node id (kept when a node leaves: quarantine survives a
    reconnect)."""

    def __init__(self) -> None:
        self.nodes: dict[str, Reputation] = {}

    def get(self, node_id: str) -> Reputation:
        """The node's reputation (a newcomer's, not stored, when unknown)."""
        return self.nodes.get(node_id) or Reputation()

    def record(self, node_id: str, passed: bool) -> Reputation:
        rep = self.nodes.get(node_id)
        if rep is None:
            rep = self.nodes[node_id] = Reputation()
        if passed:
            rep.passed += 1
        else:
            rep.failed += 1
        return rep

    def quarantine(self, node_id: str, reason: str) -> None:
        rep = self.nodes.get(node_id)
        if rep is None:
            rep = self.nodes[node_id] = Reputation()
        rep.quarantined, rep.reason = True, reason

    def is_quarantined(self, node_id: str) -> bool:
        rep = self.nodes.get(node_id)
        return rep is not None and rep.quarantined


__all__ = ["Reputation", "ReputationTable", "sampling_rate"]
