# The journal: a scheduler's history as text, one JSON object a line.
#
# Because the core is pure, what it decided is a function of (configuration, seed,
# the events and their times). A journal keeps exactly that, so a live coordinator's
# run can be audited (fed again to a fresh Scheduler: the same decisions must come
# out) or studied (its submissions and fleet replayed in the simulator under another
# policy). The format, version 1:
#
#   {"journal": "neurogrid", "version": 1, "policy": "balanced", "pricing": "static",
#    "seed": 0, "config": {...SchedulerConfig...}}                    <- a session
#   {"t": 12.5, "event": {"type": "TaskSubmitted", "task": {...}},
#    "decisions": [{"type": "Assign", ...}]}                          <- one step
#
# A file may hold several sessions (a coordinator restarted with the same path):
# each starts with its header line; times are seconds on that session's own clock.
# Values are the attrs events and decisions of events.py, field by field, with a
# "type" key; enums by value; tuples as lists; a non-finite float as the string
# "inf" or "-inf" (strict JSON has no infinity).
#
# Rules: pure (text in, values out; no files here: drivers read and write them);
# a line that cannot be read raises JournalError naming what is wrong with it,
# except an unterminated last line (a writer that crashed mid-line), which is
# dropped.
from __future__ import annotations

import enum
import functools
import json
import math
import random
import types
import typing
from typing import Any, Iterable, Iterator, Mapping

import attrs

from . import events as ev
from .events import Decision, Event, Priority
from .scheduler import Scheduler
from .state import SchedulerConfig
from .verification import TrustPolicy

FORMAT, VERSION = "neurogrid", 1

_EVENTS = frozenset(typing.get_args(Event))
_DECISIONS = frozenset(typing.get_args(Decision))
_TYPES: dict[str, type] = {cls.__name__: cls for cls in _EVENTS | _DECISIONS}
_NESTED = (ev.TaskSpec, ev.NodeSpec, ev.Usage, TrustPolicy)


class JournalError(ValueError):
    """A journal line that cannot be read; the message says why."""


@attrs.frozen
class JournalHeader:
    """How the scheduler of one session was made: enough to make it again."""

    policy: str
    pricing: str
    seed: int | str  # what the scheduler's random.Random was seeded with
    config: SchedulerConfig = SchedulerConfig()

    def make_scheduler(self) -> Scheduler:
        """A fresh scheduler made as this session's was."""
        return Scheduler(self.policy, self.pricing, random.Random(self.seed), self.config)


@attrs.frozen
class JournalEntry:
    """One step: the event handed to the core at `time` and what it decided."""

    time: float
    event: Event
    decisions: tuple[Decision, ...]


# ---- values <-> JSON ------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else "-inf" if value < 0 else "nan"
    if isinstance(value, Priority):
        return int(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if attrs.has(type(value)):
        return {a.name: _plain(getattr(value, a.name)) for a in attrs.fields(type(value))}
    return value


def to_json(value: Event | Decision) -> dict[str, Any]:
    """An event or decision as a JSON object with its "type"."""
    return {"type": type(value).__name__, **_plain(value)}


@functools.cache
def _allowed(cls: type) -> dict[str, tuple[Any, ...]]:
    """Per field, the types its hint allows: `float | None` -> (float, NoneType),
    `tuple[str, ...]` -> (tuple,)."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            out[name] = tuple(typing.get_origin(a) or a for a in typing.get_args(hint))
        else:
            out[name] = (typing.get_origin(hint) or hint,)
    return out


def _field_value(allowed: tuple[Any, ...], raw: Any) -> Any:
    if raw is None:
        return None
    if isinstance(raw, str) and raw in ("inf", "-inf", "nan") and float in allowed:
        return float(raw)
    for nested in _NESTED:
        if nested in allowed:
            return _build(nested, raw)
    for kind in allowed:  # Priority, VerifyMode: stored as their values
        if isinstance(kind, type) and issubclass(kind, enum.Enum):
            return kind(raw)
    if isinstance(raw, list):
        return tuple(raw)
    if float in allowed and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    return raw


def _build(cls: type, raw: Any) -> Any:
    if not isinstance(raw, Mapping):
        raise JournalError(f"{cls.__name__}: expected an object, got {raw!r}")
    allowed = _allowed(cls)
    unknown = set(raw) - set(allowed) - {"type"}
    if unknown:
        raise JournalError(f"{cls.__name__}: unknown field {sorted(unknown)[0]!r}")
    try:
        return cls(**{k: _field_value(allowed[k], v) for k, v in raw.items() if k != "type"})
    except (TypeError, ValueError) as e:
        raise JournalError(f"{cls.__name__}: {e}") from None


def from_json(raw: Any, kinds: frozenset[type] | None = None) -> Any:
    """The event or decision a `to_json` object describes (`kinds` limits which)."""
    name = raw.get("type") if isinstance(raw, Mapping) else None
    cls = _TYPES.get(name) if isinstance(name, str) else None
    if cls is None or (kinds is not None and cls not in kinds):
        raise JournalError(f"unknown type {name!r}")
    return _build(cls, raw)


# ---- lines ----------------------------------------------------------------------


def header_line(header: JournalHeader) -> str:
    config = attrs.asdict(header.config, recurse=False)
    config["head_start"] = {Priority(p).label: s for p, s in header.config.head_start.items()}
    config["region_latency"] = dict(header.config.region_latency)
    if header.config.trust is not None:
        config["trust"] = attrs.asdict(header.config.trust)
    return json.dumps({"journal": FORMAT, "version": VERSION, "policy": header.policy,
                       "pricing": header.pricing, "seed": header.seed,
                       "config": _plain(config)}, separators=(",", ":"))


def entry_line(time: float, event: Event, decisions: Iterable[Decision]) -> str:
    return json.dumps({"t": time, "event": to_json(event),
                       "decisions": [to_json(d) for d in decisions]},
                      separators=(",", ":"))


def _header(raw: Mapping[str, Any]) -> JournalHeader:
    if raw.get("version") != VERSION:
        raise JournalError(f"journal version {raw.get('version')!r} (this reads {VERSION})")
    try:
        config = dict(raw.get("config") or {})
        if "head_start" in config:  # keyed by priority label in the file
            config["head_start"] = {Priority.parse(p): float(s)
                                    for p, s in config["head_start"].items()}
        seed = raw["seed"]
        if not isinstance(seed, (int, str)) or isinstance(seed, bool):
            raise ValueError(f"seed: expected an integer or a string, got {seed!r}")
        return JournalHeader(str(raw["policy"]), str(raw["pricing"]), seed,
                             _build(SchedulerConfig, config))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise JournalError(f"bad session header: {e}") from None


def parse_line(line: str) -> JournalHeader | JournalEntry:
    """A header (a new session starts) or one step."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as e:
        raise JournalError(f"not JSON: {e.msg}") from None
    if not isinstance(raw, dict):
        raise JournalError("expected a JSON object")
    if raw.get("journal") == FORMAT:
        return _header(raw)
    if not {"t", "event", "decisions"} <= set(raw):
        raise JournalError("expected a session header or a step with t, event, decisions")
    time = raw["t"]
    if not isinstance(time, (int, float)) or isinstance(time, bool) or not math.isfinite(time):
        raise JournalError(f"t: expected seconds (a finite number), got {time!r}")
    if not isinstance(raw["decisions"], list):
        raise JournalError("decisions: expected a list")
    return JournalEntry(float(time), from_json(raw["event"], _EVENTS),
                        tuple(from_json(d, _DECISIONS) for d in raw["decisions"]))


def read_sessions(lines: Iterable[str], source: str = "journal"
                  ) -> Iterator[tuple[JournalHeader, list[JournalEntry]]]:
    """Each session of a journal, in order. Errors name `source` and the line."""
    header: JournalHeader | None = None
    steps: list[JournalEntry] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = parse_line(line)
        except JournalError as e:
            if not line.endswith("\n"):
                break  # the last line, cut short by a crash: the steps before it hold
            raise JournalError(f"{source}: line {number}: {e}") from None
        if isinstance(item, JournalHeader):
            if header is not None:
                yield header, steps
            header, steps = item, []
        elif header is None:
            raise JournalError(f"{source}: line {number}: a step before any session header")
        else:
            steps.append(item)
    if header is not None:
        yield header, steps


__all__ = ["JournalEntry", "JournalError", "JournalHeader", "entry_line", "from_json",
           "header_line", "parse_line", "read_sessions", "to_json"]
