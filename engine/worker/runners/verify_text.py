# Verifying a text-generation result: the pure half (numpy in, Verdict out).
#
#     proof = TextProof.from_json(result_proof)          # ValueError naming the field
#     verdict = judge_text(rows, ids, eos, sampling, finish, limit_hit, commitments)
#
# What a producer sends (RunResult.proof of a text run, PROOF_SCHEME):
#     {"scheme": "neurogrid-text/1",
#      "token_ids": [...],           the generated ids (EOS excluded), exactly as sampled:
#                                    re-tokenizing the text can give other ids
#      "finish_reason": "stop" | "length",
#      "seed": int | null,           the sampler's seed (drawn by the producer when the
#                                    task gave none), so that a validator can replay it
#      "commitments": {"source": "logits", "every": N, "k": K,
#                      "positions": [0, N, 2N, ...],   generated-token indices < len(ids)
#                      "indices": [[K ids], ...],      top-K of the logits that chose that token
#                      "values": [[K numbers], ...]}}  their values, rounded to VALUE_DECIMALS
#
# Theory of operation (teacher forcing, in the spirit of TOPLOC). The validator runs
# the real model ONCE over prompt + claimed ids (a parallel prefill: textgen.py) and
# gets `rows`: rows[i] = its logits at the position that chose claimed token i;
# rows[n] (when present) the logits after the last token, where a `stop` ended.
# Each claimed token is then tested against the validator's own distribution:
# - greedy (temperature ~0): the token's logit is within GREEDY_MARGIN of the
#   maximum. Floating-point detail (thread counts, fused kernels, one-token decode
#   steps vs. one parallel prefill) moves logits by ~1e-4; a margin far above that
#   and far below a real preference absorbs exact and near ties.
# - sampling: the greedy rule, or the token lies inside the nucleus (top_p widened
#   by NUCLEUS_SLACK) at the task's temperature AND its log-probability is above
#   LOGPROB_FLOOR (with top_p = 1 the floor is the only test: a sample below it
#   happens with probability < vocab x e^floor).
# - sampling, as a whole: with top_p = 1 every token is a possible sample, so a
#   fluent fabrication passes the per-token rules; the claimed tokens must also be
#   about as likely as the validator's own samples would be. With s_i =
#   max(log q_i(token), LIKELIHOOD_CLIP) under the validator's full distribution q
#   at the temperature (the nucleus only makes honest samples likelier), the sum
#   of s_i - E[s_i] is a martingale with known variance; z = sum / sqrt(sum Var +
#   VARIANCE_FLOOR) below -LIKELIHOOD_Z fails. Clipping bounds what one unlucky
#   honest sample can cost (|clip| / sqrt(floor) < LIKELIHOOD_Z: one rare token
#   never fails a result); a fabricated or other-model text is unlikely at most
#   of its positions and fails by many sigmas.
# - sampling with a known seed (the task's, else the one the producer drew and
#   sent in the proof): the sampler is replayed. textgen.pick_token draws one
#   uniform u per sampled token (Generator.choice), so the validator draws the
#   same u and the claimed token must be the one whose interval of the nucleus's
#   cumulative distribution holds u, within REPLAY_SLACK (logit noise moves the
#   intervals by ~1e-6). This makes a sampled result as checkable as a greedy one.
#   A sampled result with no seed to replay (no proof, or one without a seed)
#   FAILS: every producer of this version sends one, and without it a short fluent
#   fabrication under pure temperature sampling is indistinguishable from a sample.
# The decision is an aggregate: at most MAX_FAIL_FRACTION of the positions may
# fail (rounded down: on a short output, none). The finish must be plausible too:
# a `stop` (claimed, or implied by fewer than max_tokens tokens below the context
# limit) needs an end-of-sequence token that passes the same rule at rows[n] (a
# truncated output does not); a `length` needs exactly max_tokens tokens or the
# context limit; no claimed token may be an end-of-sequence token.
# Commitments: at each committed position the validator's top-K must be the claimed
# one within COMMIT_TOLERANCE (logit units): every claimed index's value matches
# the claimed value, and no unclaimed value exceeds the smallest claimed one by
# more than the tolerance. They pin down the model's activations (a different
# model or a cheaper one under the same name gives other values even where it
# picks the same tokens). We commit to the logits rather than the last hidden
# state: logits are a linear image of it (the LM head), every operator's HF
# export has them (no extra graph output, no pack rebuild), and the producer
# already has them at every step (recording costs one argpartition).
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from engine.worker.runners.base import Verdict

__all__ = [
    "COMMIT_EVERY",
    "COMMIT_K",
    "COMMIT_TOLERANCE",
    "GREEDY_BELOW",
    "GREEDY_MARGIN",
    "LIKELIHOOD_Z",
    "LOGPROB_FLOOR",
    "MAX_FAIL_FRACTION",
    "NUCLEUS_SLACK",
    "PROOF_SCHEME",
    "VALUE_DECIMALS",
    "Commitments",
    "CommitmentRecorder",
    "TextProof",
    "judge_text",
    "likelihood_z",
    "replay_failures",
    "token_passes",
]

PROOF_SCHEME = "neurogrid-text/1"
COMMIT_EVERY = 8  # a commitment every N generated tokens
COMMIT_K = 8  # of the top K logits
VALUE_DECIMALS = 3  # committed values are rounded to this many decimals
MAX_EVERY, MAX_K = 4096, 64
GREEDY_MARGIN = 0.25  # logits; honest runs differ by < 1e-2 (benchmarks/trust.py measures it)
NUCLEUS_SLACK = 0.02  # probability mass added to top_p before testing a sampled token
LOGPROB_FLOOR = math.log(1e-7)  # natural log, at the task's temperature
MAX_FAIL_FRACTION = 0.05  # of the positions; rounded down
COMMIT_TOLERANCE = 0.1  # logits; rounding contributes 5e-4
MAX_COMMIT_FAIL_FRACTION = 0.0  # every commitment must match
REPLAY_SLACK = 1e-3  # of cumulative probability, each side of the claimed token's interval
LIKELIHOOD_CLIP = math.log(1e-3)  # a token's log-likelihood counts at most this low
LIKELIHOOD_Z = 5.0  # standard deviations below the expected log-likelihood that fail
VARIANCE_FLOOR = 4.0  # added to the variance: one clipped token moves z by < 3.5
# Below this temperature sampling is greedy (textgen.pick_token): the distribution is
# one-hot to float64 precision anyway, and the API refuses such values (the kind's
# least_positive).
GREEDY_BELOW = 1e-6


@attrs.frozen
class Commitments:
    """Top-k logits at every `every`-th generated token (see the module comment)."""

    every: int
    k: int
    positions: tuple[int, ...]
    indices: tuple[tuple[int, ...], ...]
    values: tuple[tuple[float, ...], ...]
    source: str = "logits"

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "every": self.every, "k": self.k, "positions": list(self.positions),
                "indices": [list(row) for row in self.indices], "values": [list(row) for row in self.values]}

    @classmethod
    def from_json(cls, value: Any) -> Commitments:
        """Raises ValueError naming the field that is wrong."""
        if not isinstance(value, Mapping):
            raise ValueError("proof.commitments must be an object")
        source = value.get("source", "logits")
        if source != "logits":
            raise ValueError(f"proof.commitments.source must be 'logits', got {source!r}")
        every, k = _int(value.get("every"), "every", 1, MAX_EVERY), _int(value.get("k"), "k", 1, MAX_K)
        positions = _int_list(value.get("positions"), "positions")
        indices, values = value.get("indices"), value.get("values")
        if not isinstance(indices, list) or not isinstance(values, list) \
                or not len(indices) == len(values) == len(positions):
            raise ValueError("proof.commitments: positions, indices and values must be lists of one length")
        rows_i = tuple(tuple(_int_list(row, "indices")) for row in indices)
        rows_v = tuple(tuple(_float_list(row, "values")) for row in values)
        for row_i, row_v in zip(rows_i, rows_v):
            if not len(row_i) == len(row_v) == k or len(set(row_i)) != k:
                raise ValueError(f"proof.commitments: each row must hold {k} distinct indices and {k} values")
        return cls(every, k, tuple(positions), rows_i, rows_v)


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"proof.commitments.{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _int_list(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value):
        raise ValueError(f"proof.{name} must be a list of integers >= 0")
    return value


def _float_list(value: Any, name: str) -> list[float]:
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                          or not math.isfinite(v) for v in value):
        raise ValueError(f"proof.commitments.{name} must be lists of finite numbers")
    return [float(v) for v in value]


@attrs.define
class CommitmentRecorder:
    """The producer's side: fed the logits of every step, keeps every `every`-th top-k."""

    every: int = COMMIT_EVERY
    k: int = COMMIT_K
    rows: list[tuple[int, tuple[int, ...], tuple[float, ...]]] = attrs.Factory(list)

    def observe(self, index: int, logits: np.ndarray) -> None:
        """`logits` chose generated token `index` (or, at index n, the end)."""
        if index % self.every:
            return
        top = _top_k(logits, self.k)
        self.rows.append((index, tuple(int(i) for i in top),
                          tuple(round(float(logits[i]), VALUE_DECIMALS) for i in top)))

    def commitments(self, generated: int) -> Commitments:
        """The commitments of the `generated` tokens (positions < generated)."""
        kept = [row for row in self.rows if row[0] < generated]
        return Commitments(self.every, self.k, tuple(r[0] for r in kept), tuple(r[1] for r in kept),
                           tuple(r[2] for r in kept))


def _top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first (ties: the lower index first)."""
    k = min(k, len(logits))
    part = np.argpartition(-logits, k - 1)[:k]
    order = np.lexsort((part, -logits[part]))
    result: np.ndarray = part[order]
    return result


@attrs.frozen
class TextProof:
    """A text result's proof, parsed (see the module comment for the JSON)."""

    token_ids: tuple[int, ...]
    finish_reason: str | None = None
    commitments: Commitments | None = None
    seed: int | None = None

    def to_json(self) -> dict[str, Any]:
        proof: dict[str, Any] = {"scheme": PROOF_SCHEME, "token_ids": list(self.token_ids), "seed": self.seed}
        if self.finish_reason is not None:
            proof["finish_reason"] = self.finish_reason
        if self.commitments is not None:
            proof["commitments"] = self.commitments.to_json()
        return proof

    @classmethod
    def from_json(cls, value: Any) -> TextProof:
        """Raises ValueError naming the field that is wrong."""
        if not isinstance(value, Mapping):
            raise ValueError("proof must be an object")
        if value.get("scheme") != PROOF_SCHEME:
            raise ValueError(f"proof.scheme must be {PROOF_SCHEME!r}, got {value.get('scheme')!r}")
        ids = _int_list(value.get("token_ids"), "token_ids")
        finish = value.get("finish_reason")
        if finish is not None and finish not in ("stop", "length", "cancelled"):
            raise ValueError(f"proof.finish_reason must be stop, length or cancelled, got {finish!r}")
        commitments = value.get("commitments")
        seed = value.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"proof.seed must be an integer >= 0 or null, got {seed!r}")
        return cls(tuple(ids), finish, Commitments.from_json(commitments) if commitments is not None else None,
                   seed)


def _log_softmax(row: np.ndarray, temperature: float) -> np.ndarray:
    scaled = row.astype(np.float64) / temperature
    scaled -= scaled.max()
    result: np.ndarray = scaled - np.log(np.exp(scaled).sum())
    return result


def token_passes(row: np.ndarray, token: int, temperature: float, top_p: float) -> bool:
    """Whether an honest run could have picked `token` from logits `row` (module rules)."""
    value, best = float(row[token]), float(row.max())
    if value >= best - GREEDY_MARGIN:
        return True
    if temperature < GREEDY_BELOW:
        return False
    logp = _log_softmax(row, temperature)
    if logp[token] < LOGPROB_FLOOR:
        return False
    probs = np.exp(logp)
    before = float(probs[probs > probs[token]].sum())  # mass of the tokens sampled before it
    return before < min(1.0, top_p + NUCLEUS_SLACK) or top_p >= 1.0


def replay_failures(rows: np.ndarray, ids: Sequence[int], temperature: float, top_p: float,
                    seed: int) -> list[int]:
    """Positions whose claimed token is not what the seeded sampler picks (module rules)."""
    rng = np.random.default_rng(seed)
    failed = []
    for i, (row, token) in enumerate(zip(rows, ids)):
        values = row.astype(np.float64)
        probs = np.exp((values - values.max()) / temperature)
        probs /= probs.sum()
        # only tokens that can hold u matter: the rest (< 1e-12 each, < 1e-7 together)
        # are left out of the sort, which is what costs (the vocabulary is ~50k)
        candidates = np.flatnonzero(probs > 1e-12)
        order = candidates[np.argsort(-probs[candidates], kind="stable")]
        keep = min(int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1, len(order))
        kept = order[:keep]
        cdf = np.cumsum(probs[kept])
        cdf /= cdf[-1]
        u = rng.random()
        where = np.flatnonzero(kept == token)
        if not len(where):
            failed.append(i)
            continue
        j = int(where[0])
        low = float(cdf[j - 1]) if j else 0.0
        if not low - REPLAY_SLACK <= u <= float(cdf[j]) + REPLAY_SLACK:
            failed.append(i)
    return failed


def likelihood_z(rows: np.ndarray, ids: Sequence[int], temperature: float) -> float:
    """How many standard deviations the claimed tokens' clipped log-likelihood lies
    above (+) or below (-) what the validator's own samples would score (module rules)."""
    scaled = rows[:len(ids)].astype(np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    logq = scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))
    q = np.exp(logq)
    clipped = np.maximum(logq, LIKELIHOOD_CLIP)
    mean = (q * clipped).sum(axis=1)
    variance = np.maximum(0.0, (q * clipped * clipped).sum(axis=1) - mean * mean)
    total = float(clipped[np.arange(len(ids)), list(ids)].sum())
    return (total - float(mean.sum())) / math.sqrt(float(variance.sum()) + VARIANCE_FLOOR)


def _commitment_failures(rows: np.ndarray, commitments: Commitments, generated: int) -> tuple[int, str]:
    """(positions that do not match, the first mismatch in words)."""
    expected = tuple(range(0, generated, commitments.every))
    if commitments.positions != expected:
        return max(1, len(expected)), (f"commitments at positions {list(commitments.positions)[:8]}, "
                                       f"expected every {commitments.every} of {generated} tokens")
    failures, first = 0, ""
    for position, indices, values in zip(commitments.positions, commitments.indices, commitments.values):
        row = rows[position]
        if max(indices) >= len(row):
            return len(expected), f"commitment index {max(indices)} outside the vocabulary ({len(row)})"
        mine = row[list(indices)].astype(np.float64)
        error = float(np.max(np.abs(mine - np.asarray(values))))
        kth = float(row[_top_k(row, commitments.k)[-1]])
        missed = kth - min(values)
        if error > COMMIT_TOLERANCE or missed > COMMIT_TOLERANCE:
            failures += 1
            first = first or (f"commitment at token {position}: top-{commitments.k} values differ by "
                              f"{max(error, missed):.3f} (tolerance {COMMIT_TOLERANCE})")
    return failures, first


def judge_text(
    rows: np.ndarray,
    ids: Sequence[int],
    eos: frozenset[int],
    temperature: float,
    top_p: float,
    max_tokens: int,
    finish: str | None,
    limit_hit: bool,
    commitments: Commitments | None,
    seed: int | None = None,
) -> Verdict:
    """The verdict on claimed `ids` given the validator's logits `rows` (module rules).

    rows has len(ids) + 1 rows (the last: after the final token) or len(ids) when
    the context limit left no room for another; `limit_hit` says the claimed ids
    filled the model's context."""
    n = len(ids)
    if n > max_tokens:
        return Verdict(False, 0.0, f"{n} tokens claimed; max_tokens is {max_tokens}")
    inside = [i for i, token in enumerate(ids) if token in eos]
    if inside:
        return Verdict(False, 0.0, f"claimed token {inside[0]} is an end-of-sequence token")
    failed = [i for i, token in enumerate(ids) if not token_passes(rows[i], token, temperature, top_p)]
    allowed = int(MAX_FAIL_FRACTION * n)
    score = 1.0 - len(failed) / n if n else 1.0
    detail = (f"teacher-forced check of {n} tokens: {len(failed)} implausible (allowed {allowed}); "
              f"{'greedy' if temperature < GREEDY_BELOW else f'T={temperature:g}, top_p={top_p:g}'}")
    if failed:
        i = failed[0]
        detail += f"; first at token {i} (id {ids[i]}, logit {float(rows[i][ids[i]]):.3f} vs max " \
                  f"{float(rows[i].max()):.3f})"
    passed = len(failed) <= allowed
    if temperature >= GREEDY_BELOW and seed is None:
        passed, detail = False, detail + "; sampled, but no seed to replay (neither the task nor the proof names one)"
    if temperature >= GREEDY_BELOW and n and seed is not None:
        replayed = replay_failures(rows, ids, temperature, top_p, seed)
        detail += f"; seeded replay: {len(replayed)} of {n} tokens differ (allowed {allowed})"
        if len(replayed) > allowed:
            passed, score = False, min(score, 1.0 - len(replayed) / n)
    if temperature >= GREEDY_BELOW and n:
        z = likelihood_z(rows, ids, temperature)
        detail += f"; log-likelihood z {z:+.2f} (fails below -{LIKELIHOOD_Z:g})"
        if z < -LIKELIHOOD_Z:
            passed, score = False, min(score, max(0.0, 1.0 + z / (2 * LIKELIHOOD_Z)))
    if finish == "cancelled":
        return Verdict(False, score, detail + "; a cancelled run is not a result")
    stopped = finish == "stop" or (finish is None and n < max_tokens and not limit_hit)
    if finish == "length" and n < max_tokens and not limit_hit:
        passed, detail = False, detail + f"; finish 'length' claimed with {n} of max_tokens {max_tokens} tokens"
    if stopped:
        if len(rows) <= n:
            passed, detail = False, detail + "; a stop claimed at the context limit"
        elif not any(token_passes(rows[n], token, temperature, top_p) for token in eos if token < len(rows[n])):
            passed = False
            detail += f"; the output cannot end after token {n} (no end-of-sequence is plausible: truncated?)"
    if commitments is not None:
        bad, why = _commitment_failures(rows, commitments, n)
        count = max(1, len(commitments.positions))
        score = min(score, 1.0 - bad / count)
        if bad > int(MAX_COMMIT_FAIL_FRACTION * count):
            passed = False
        detail += f"; {len(commitments.positions) - min(bad, len(commitments.positions))}/" \
                  f"{len(commitments.positions)} commitments match" + (f" ({why})" if why else "")
    else:
        detail += "; no commitments"
    return Verdict(passed, max(0.0, score), detail)
