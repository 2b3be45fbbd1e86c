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
# - sampling: the sampler is replayed with the task's seed, else the one the
#   producer drew and sent in the proof. textgen.pick_token draws one uniform u per
#   token (Generator.choice over the top_p nucleus at the temperature, in float64),
#   so the validator draws the same u's and each claimed token's interval of the
#   nucleus's cumulative distribution must hold its u, within REPLAY_SLACK (logit
#   noise moves the intervals by ~1e-6). This pins every token as tightly as greedy
#   decoding does, and has no false positives where a per-token plausibility rule
#   does: at temperature 1 with top_p 1 an honest sample from a flat distribution's
#   tail (p < 1e-7) is rare, not impossible, and a floor on log-probability failed
#   one honest result in our tests. Without a seed to replay (no proof, or a proof
#   without one) a sampled result FAILS: every producer of this version sends one,
#   and without it a short fluent fabrication is indistinguishable from a sample.
# The decision is an aggregate: at most MAX_FAIL_FRACTION of the positions may
# fail (rounded down: on a short output, none). The finish must be plausible too:
# a `stop` (claimed, or implied by fewer than max_tokens tokens below the context
# limit) needs an end-of-sequence token at rows[n] (greedy: within the margin of
# the maximum; sampled: the replayed draw there lands on one), so a truncated output
# fails; a `length` needs exactly max_tokens tokens or the context limit; no
# claimed token may be an end-of-sequence token.
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
    "MAX_FAIL_FRACTION",
    "PROOF_SCHEME",
    "REPLAY_SLACK",
    "VALUE_DECIMALS",
    "Commitments",
    "CommitmentRecorder",
    "TextProof",
    "greedy_passes",
    "judge_text",
    "replay_sampler",
]

PROOF_SCHEME = "neurogrid-text/1"
COMMIT_EVERY = 8  # a commitment every N generated tokens
COMMIT_K = 8  # of the top K logits
VALUE_DECIMALS = 3  # committed values are rounded to this many decimals
MAX_EVERY, MAX_K = 4096, 64
GREEDY_MARGIN = 0.25  # logits; honest runs differ by ~1e-4 (benchmarks/trust.py measures it)
REPLAY_SLACK = 1e-3  # of cumulative probability, each side of the claimed token's interval
MAX_FAIL_FRACTION = 0.05  # of the positions; rounded down
COMMIT_TOLERANCE = 0.1  # logits; rounding contributes 5e-4
MAX_COMMIT_FAIL_FRACTION = 0.0  # every commitment must match
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


def greedy_passes(row: np.ndarray, token: int) -> bool:
    """Whether greedy decoding could have picked `token` from logits `row`: within
    GREEDY_MARGIN of the maximum."""
    return float(row[token]) >= float(row.max()) - GREEDY_MARGIN


def replay_sampler(rows: np.ndarray, temperature: float, top_p: float,
                   seed: int) -> list[tuple[np.ndarray, float, float]]:
    """For each row, what textgen.pick_token's seeded draw saw: the token
    probabilities (float64, as it computes them), the mass of its nucleus and the
    uniform u it drew."""
    rng = np.random.default_rng(seed)
    draws = []
    for row in rows:
        values = row.astype(np.float64)
        probs = np.exp((values - values.max()) / temperature)
        probs /= probs.sum()
        draws.append((probs, _nucleus_mass(probs, top_p), float(rng.random())))
    return draws


def _nucleus_mass(probs: np.ndarray, top_p: float) -> float:
    """The probability mass pick_token keeps: the most likely tokens until their sum
    reaches top_p (all of it for top_p = 1). Sorts only the head it needs."""
    if top_p >= 1.0:
        return 1.0
    head = min(len(probs), 256)
    while True:
        top = np.argpartition(-probs, head - 1)[:head] if head < len(probs) else np.arange(len(probs))
        ordered = np.sort(probs[top])[::-1]
        total = np.cumsum(ordered)
        if total[-1] >= top_p or head == len(probs):
            return float(total[min(int(np.searchsorted(total, top_p)), len(total) - 1)])
        head = min(len(probs), head * 8)


def _holds(draw: tuple[np.ndarray, float, float], tokens: frozenset[int], top_p: float) -> bool:
    """Whether the draw lands (within REPLAY_SLACK) on one of `tokens`: the token's
    interval of the nucleus's cumulative distribution, in pick_token's order (most
    likely first, ties by id), holds u."""
    probs, mass, u = draw
    for token in tokens:
        p = probs[token]
        before = float(probs[probs > p].sum() + probs[:token][probs[:token] == p].sum())
        if before >= min(1.0, top_p) + REPLAY_SLACK:  # outside the nucleus
            continue
        low, high = before / mass, (before + float(p)) / mass
        if low - REPLAY_SLACK <= u <= high + REPLAY_SLACK:
            return True
    return False


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
    greedy = temperature < GREEDY_BELOW
    stopped = finish == "stop" or (finish is None and n < max_tokens and not limit_hit)
    if not greedy and seed is None:
        return Verdict(False, 0.0, f"sampled (T={temperature:g}), but no seed to replay: neither the task "
                                   "nor the proof names one")
    draws = [] if greedy or seed is None else replay_sampler(rows[:n + 1], temperature, top_p, seed)
    if greedy:
        failed = [i for i, token in enumerate(ids) if not greedy_passes(rows[i], token)]
    else:
        failed = [i for i, token in enumerate(ids) if not _holds(draws[i], frozenset([token]), top_p)]
    allowed = int(MAX_FAIL_FRACTION * n)
    score = 1.0 - len(failed) / n if n else 1.0
    how = "greedy" if greedy else f"seeded replay, T={temperature:g}, top_p={top_p:g}"
    detail = f"teacher-forced check of {n} tokens ({how}): {len(failed)} implausible (allowed {allowed})"
    if failed:
        i = failed[0]
        detail += f"; first at token {i} (id {ids[i]}, logit {float(rows[i][ids[i]]):.3f} vs max " \
                  f"{float(rows[i].max()):.3f})"
    passed = len(failed) <= allowed
    if finish == "cancelled":
        return Verdict(False, score, detail + "; a cancelled run is not a result")
    if finish == "length" and n < max_tokens and not limit_hit:
        passed, detail = False, detail + f"; finish 'length' claimed with {n} of max_tokens {max_tokens} tokens"
    if stopped:
        ends = frozenset(token for token in eos if len(rows) > n and token < len(rows[n]))
        if len(rows) <= n:
            passed, detail = False, detail + "; a stop claimed at the context limit"
        elif not (any(greedy_passes(rows[n], token) for token in ends) if greedy else _holds(draws[n], ends, top_p)):
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
