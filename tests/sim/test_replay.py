"""Journal replay: `python -m sim --replay FILE [--check]` on recorded runs."""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import attrs
import pytest

from engine.core import (
    Assign, NodeDraining, NodeJoined, NodeLost, NodeSpec, Priority, TaskCancelled,
    TaskFinished, TaskSpec, TaskSubmitted, Usage, gpu_rate,
)
from engine.core.journal import JournalEntry, JournalHeader, header_line
from sim import ScenarioError, load_scenario, parse_scenario, run_scenario
from sim.cli import main
from sim.loop import journal_header
from sim.replay import load_sessions, scenario_from_session, write_session


def write_journal(path: Path, sessions: list[tuple[JournalHeader, list]]) -> Path:
    with open(path, "a") as f:
        for header, steps in sessions:
            write_session(f, header, [JournalEntry(*step) for step in steps])
    return path


def journal_of_run(path: Path, scenario, policy: str = "balanced", seed: int = 3):
    """Run a scenario recorded and write its journal, as a live coordinator would."""
    result = run_scenario(scenario, policy, seed, record=True)
    header = journal_header(scenario, policy, "static", seed)
    write_journal(path, [(header, [(e.time, e.event, e.decisions) for e in result.log])])
    return result


def rounded(value):
    """A step with floats rounded: usage seconds go through seconds x rate / rate."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, tuple):
        return tuple(rounded(v) for v in value)
    if attrs.has(type(value)):
        return (type(value).__name__, *(rounded(getattr(value, a.name))
                                        for a in attrs.fields(type(value))))
    return value


def test_check_confirms_a_recorded_run_and_names_the_first_difference(tmp_path, capsys):
    scenario = load_scenario("failures").evolve(duration=900.0, warmup=0.0)
    path = tmp_path / "run.jsonl"
    result = journal_of_run(path, scenario)
    assert main(["--replay", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    assert f"{len(result.log):,} steps, every decision as recorded" in out

    # Send one assignment to another node in the file: the check must catch it.
    lines = path.read_text().splitlines()
    k = next(i for i, line in enumerate(lines) if '"Assign"' in line)
    step = json.loads(lines[k])
    step["decisions"][0]["node_id"] = "g9n9"
    lines[k] = json.dumps(step)
    path.write_text("\n".join(lines) + "\n")
    assert main(["--replay", str(path), "--check"]) == 1
    out = capsys.readouterr().out
    assert f"step {k} at t=" in out and "g9n9" in out  # line k is step k (header: line 0)


@pytest.mark.parametrize("name", ["mmc", "hetero"])
def test_what_if_with_the_recorded_policy_reproduces_the_run(tmp_path, name):
    # No warmup, no expiry: every task completes, so every size is measured and the
    # replayed fleet and traffic are the run's own; only float rounding differs.
    scenario = load_scenario(name).evolve(duration=600.0, warmup=0.0)
    path = tmp_path / "run.jsonl"
    original = journal_of_run(path, scenario)
    (header, steps), = load_sessions(path)
    replay = run_scenario(scenario_from_session(header, steps, "r", str(path)), record=True)
    assert [rounded((e.time, e.event, e.decisions)) for e in replay.log] == \
        [rounded((e.time, e.event, e.decisions)) for e in original.log]
    assert replay.summary["tasks"]["completed"] == original.summary["tasks"]["completed"]


def test_what_if_compares_policies_on_the_recorded_traffic(tmp_path, capsys):
    scenario = load_scenario("hetero").evolve(duration=300.0, warmup=0.0)
    path = tmp_path / "run.jsonl"
    original = journal_of_run(path, scenario)
    out_json = tmp_path / "out.json"
    assert main(["--replay", str(path), "--policy", "balanced,round_robin,cheapest",
                 "--json", str(out_json)]) == 0
    runs = json.loads(out_json.read_text())["runs"]
    assert [r["policy"] for r in runs] == ["balanced", "round_robin", "cheapest"]
    submitted = original.summary["tasks"]["submitted"]
    for run in runs:
        assert run["tasks"]["submitted"] == run["tasks"]["completed"] == submitted
        assert run["little"]["error_pct"] < 1.0
    # The same tasks, placed differently: the cheapest policy pays least.
    assert runs[2]["cost"]["total"] < runs[1]["cost"]["total"]


def node(node_id: str, gpu: str = "RTX 4090", slots: int = 1) -> NodeSpec:
    return NodeSpec(node_id, gpu, 24.0, ("llama2:7b",), slots, loaded=("llama2:7b",))


def test_replay_keeps_cancellations_node_losses_drains_and_measured_sizes(tmp_path):
    """A journal as the live coordinator writes it (its own clock, not from 0; a CPU
    worker; a client cancelling; a node lost; a node draining)."""
    header = JournalHeader("balanced", "static", 0)
    scheduler = header.make_scheduler()
    t0 = 5000.0
    steps = []

    def feed(dt, event):
        steps.append((t0 + dt, event, tuple(scheduler.handle(event, t0 + dt))))

    feed(0.0, NodeJoined(node("a")))
    feed(0.5, NodeJoined(attrs.evolve(node("b", gpu="cpu"), models=("llama2:7b", "mystery"))))
    for i in range(4):
        feed(1.0 + i / 5, TaskSubmitted(TaskSpec(f"t{i}", "llama2:7b", Priority.STANDARD, 10,
                                                 100)))
    feed(2.5, TaskCancelled("t3"))  # queued when cancelled, live and in the replay
    running = {d.task_id: d.node_id for _, _, ds in steps for d in ds if isinstance(d, Assign)}
    assert running["t0"] == "a"
    feed(3.0, TaskFinished("t0", "a", Usage(2.0, 100, 10)))
    feed(6.0, NodeLost("b", "disconnected"))  # t1 goes back to the queue
    feed(6.5, NodeDraining("a"))
    path = write_journal(tmp_path / "live.jsonl", [(header, steps)])

    (read_header, read_steps), = load_sessions(path)
    scenario = scenario_from_session(read_header, read_steps, "live", str(path))
    fleet = {n.spec.node_id: n for n in scenario.scripted_nodes}
    assert (fleet["a"].join, fleet["a"].drain, fleet["a"].lost) == (0.0, 6.5, float("inf"))
    assert (fleet["b"].join, fleet["b"].lost) == (0.5, 6.0)
    recorded = scenario.workloads[0].arrival
    assert recorded.cancellations == ((2.5, "t3"),)
    sizes = {spec.task_id: work for _, spec, work in recorded.tasks}
    assert sizes["t0"] == pytest.approx(2.0 * gpu_rate("RTX 4090", "llama2:7b"))  # measured
    assert sizes["t2"] == pytest.approx(100 + 10 / 40)  # never ran: the catalog's estimate

    summary = run_scenario(scenario).summary
    assert summary["tasks"]["submitted"] == 4
    assert summary["tasks"]["cancelled"] == 1
    assert summary["tasks"]["completed"] == 3  # t1 and t2 are done before b is lost
    assert set(summary["utilization"]["by_gpu"]) >= {"RTX 4090", "cpu"}


def test_sessions_are_chosen_by_number(tmp_path, capsys):
    scenario = parse_scenario({
        "name": "t", "duration": 60.0,
        "nodes": [{"count": 2, "gpu": "A100"}],
        "workload": [{"arrival": {"process": "poisson", "rate": 0.5}}]}, "t")
    path = tmp_path / "two.jsonl"
    journal_of_run(path, scenario, seed=1)
    journal_of_run(path, scenario.evolve(nodes=(attrs.evolve(scenario.nodes[0], count=5),)),
                   seed=2)
    assert len(load_sessions(path)) == 2
    assert main(["--replay", str(path), "--check"]) == 0
    assert capsys.readouterr().out.count("every decision as recorded") == 2
    out_json = tmp_path / "s1.json"
    assert main(["--replay", str(path), "--session", "1", "--json", str(out_json)]) == 0
    assert "A100" in json.loads(out_json.read_text())["runs"][0]["utilization"]["by_gpu"]
    capsys.readouterr()
    assert main(["--replay", str(path), "--check", "--session", "2"]) == 0
    assert capsys.readouterr().out.startswith("session 2 (balanced, static, seed '2/scheduler')")
    for check in ([], ["--check"]):
        assert main(["--replay", str(path), "--session", "3", *check]) == 2
        assert "--session" in capsys.readouterr().err


@pytest.mark.parametrize("content,words", [
    (None, "a readable journal file"),
    ("", "at least one session header"),
    ("{not json\n", "line 1: not JSON"),
    ('{"t": 1.0, "event": {"type": "Tick"}, "decisions": []}\n', "before any session"),
    (header_line(JournalHeader("balanced", "static", 0))
     + '\n{"t": 1.0, "event": {"type": "Explode"}, "decisions": []}\n',
     "line 2: unknown type 'Explode'"),
    (header_line(JournalHeader("balanced", "static", 0))
     + '\n{"t": 1.0, "event": {"type": "NodeLost", "node": 1}, "decisions": []}\n',
     "unknown field 'node'"),
    (header_line(JournalHeader("balanced", "static", 0))
     + '\n{"t": NaN, "event": {"type": "Tick"}, "decisions": []}\n', "a finite number"),
    (header_line(JournalHeader("balanced", "static", 0))
     + '\n{"t": 5.0, "event": {"type": "Tick"}, "decisions": []}'
     + '\n{"t": 4.0, "event": {"type": "Tick"}, "decisions": []}\n',
     "step 2: expected times that never go backwards"),
])
def test_a_bad_journal_is_one_line_and_exit_2(tmp_path, capsys, content, words):
    path = tmp_path / "j.jsonl"
    if content is not None:
        path.write_text(content)
    assert main(["--replay", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and words in err[0], err


@pytest.mark.parametrize("argv,words", [
    (["--check"], "--replay JOURNAL"),
    (["--session", "1"], "--replay JOURNAL"),
    (["mmc", "--replay", "x.jsonl"], "not both"),
    (["--replay", "x.jsonl", "--duration", "5"], "no --duration"),
])
def test_replay_options_are_checked(capsys, argv, words):
    assert main(argv) == 2
    assert words in capsys.readouterr().err


def test_simulated_runs_write_journals_that_check(tmp_path, capsys):
    path = tmp_path / "sim.jsonl"
    assert main(["failures", "--duration", "900", "--policy", "balanced,random",
                 "--journal", str(path)]) == 0
    assert f"wrote {path}" in capsys.readouterr().out
    sessions = load_sessions(path)
    assert [header.policy for header, _ in sessions] == ["balanced", "random"]
    assert main(["--replay", str(path), "--check"]) == 0
    assert capsys.readouterr().out.count("every decision as recorded") == 2
    packed = tmp_path / "sim.jsonl.gz"
    assert main(["failures", "--duration", "900", "--policy", "balanced,random",
                 "--journal", str(packed)]) == 0
    assert load_sessions(packed) == sessions
    assert main(["mmc", "--journal", str(tmp_path / "no" / "such" / "dir.jsonl")]) == 2
    assert "cannot write the journal" in capsys.readouterr().err


def test_a_journal_cut_short_by_a_crash_reads_up_to_the_cut(tmp_path):
    scenario = load_scenario("mmc").evolve(duration=200.0, warmup=0.0)
    whole = tmp_path / "whole.jsonl"
    journal_of_run(whole, scenario)
    text = whole.read_bytes()
    (_, steps), = load_sessions(whole)
    # plain: the last line stops mid-way (the writer died between two flushes)
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(text[:-40])
    (_, kept), = load_sessions(cut)
    assert kept == steps[:-1]
    # gzip: a member without its end-of-stream marker (never closed)
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # gzip framing
    data = compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH)
    cut_gz = tmp_path / "cut.jsonl.gz"
    cut_gz.write_bytes(data)
    (_, kept), = load_sessions(cut_gz)
    assert kept == steps
    # a line that is broken in the middle of the file is still an error
    broken = tmp_path / "broken.jsonl"
    lines = text.decode().splitlines(keepends=True)
    broken.write_text("".join(lines[:5] + ['{"t": oops\n'] + lines[5:]))
    with pytest.raises(ScenarioError, match="line 6: not JSON"):
        load_sessions(broken)
