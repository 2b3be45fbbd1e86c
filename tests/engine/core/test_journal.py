"""The journal codec: every event and decision the core can produce goes to a JSON
line and back unchanged, and a journal replays to the decisions it records."""
from __future__ import annotations

import io
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core import (
    Assign, NodeJoined, NodeSpec, Priority, SchedulerConfig, TaskSpec, TaskSubmitted,
    VerifyMode,
)
from engine.core.journal import (
    JournalEntry, JournalError, JournalHeader, entry_line, from_json, header_line,
    parse_line, read_sessions, to_json,
)
from tests.engine.core.test_scheduler_properties import run_ops
from tests.strategies import policy_names, scheduler_ops


@settings(max_examples=50, deadline=None)
@given(st.lists(scheduler_ops, min_size=20, max_size=120), policy_names,
       st.integers(0, 2**32 - 1))
def test_random_runs_round_trip_and_replay(ops, policy, seed):
    _, log = run_ops(ops, policy, seed, check=False)
    header = JournalHeader(policy, "static", seed,
                           SchedulerConfig(heartbeat_timeout=25.0, max_node_losses=3))
    text = "\n".join([header_line(header)]
                     + [entry_line(now, event, decisions) for now, event, decisions in log])
    [(read_header, steps)] = read_sessions(io.StringIO(text + "\n"))
    assert read_header == header
    assert steps == [JournalEntry(now, event, tuple(d)) for now, event, d in log]
    for line in text.splitlines():
        json.loads(line, parse_constant=pytest.fail)  # strict JSON: no Infinity/NaN
    replay = read_header.make_scheduler()
    for step in steps:
        assert tuple(replay.handle(step.event, step.time)) == step.decisions


def test_values_keep_their_types():
    spec = TaskSpec("t", "llama2:7b", Priority.CRITICAL, 3, 4, deadline=math.inf)
    event = from_json(to_json(TaskSubmitted(spec)))
    assert event == TaskSubmitted(spec) and event.task.priority is Priority.CRITICAL
    node = NodeSpec("n", "A100", 80.0, ("llama2:7b", "whisper"), 2, price_per_hour=None,
                    loaded=("whisper",))
    joined = from_json(json.loads(json.dumps(to_json(NodeJoined(node)))))
    assert joined == NodeJoined(node) and isinstance(joined.node.models, tuple)
    assert to_json(Assign("t", "n", "llama2:7b", 1, math.inf, False))["deadline"] == "inf"


def test_a_verify_mode_comes_back_as_its_member_and_a_bad_one_is_named():
    # TaskSpec does not convert its verify mode: the journal parses it
    spec = TaskSpec("t", "llama2:7b", verify=VerifyMode.SAMPLED)
    raw = json.loads(json.dumps(to_json(TaskSubmitted(spec))))
    assert raw["task"]["verify"] == "sampled"
    assert from_json(raw).task.verify is VerifyMode.SAMPLED
    raw["task"]["verify"] = "sometimes"
    with pytest.raises(JournalError, match="TaskSpec: 'sometimes'"):
        from_json(raw)


@pytest.mark.parametrize("line,words", [
    ("[]", "expected a JSON object"),
    ('{"journal": "neurogrid", "version": 2}', "journal version 2"),
    ('{"journal": "neurogrid", "version": 1, "policy": "balanced"}', "bad session header"),
    ('{"t": 1, "event": {"type": "Tick"}}', "a step with t, event, decisions"),
    ('{"t": true, "event": {"type": "Tick"}, "decisions": []}', "t: expected seconds"),
    ('{"t": 1, "event": {"type": "Assign"}, "decisions": []}', "unknown type 'Assign'"),
    ('{"t": 1, "event": {"type": "Tick"}, "decisions": [{"type": "Tick"}]}',
     "unknown type 'Tick'"),
    ('{"t": 1, "event": {"type": "TaskSubmitted", "task": {"task_id": "t", "model": "m", '
     '"priority": 9}}, "decisions": []}', "TaskSpec"),
])
def test_bad_lines_say_what_is_wrong(line, words):
    with pytest.raises(JournalError, match=words):
        parse_line(line)
