"""Sweeps: variants x seeds in one table, the same on every backend; bad sweep files."""
from __future__ import annotations

import json
import sys

import attrs
import pytest

from sim import Poisson, confidence_interval, load_scenario, run_scenario
from sim.backends import BACKENDS, BackendUnavailable
from sim.cli import main
from sim.sweep import METRICS, apply_overrides, load_sweep, parse_key, run_sweep

SMALL = """
name = "small"
seed = 11
duration = 5.0
[[nodes]]
count = 2
gpu = "RTX 3090"
models = ["llama2:7b"]
[[nodes]]
count = 1
gpu = "H100"
models = ["llama2:7b"]
[[workload]]
model = "llama2:7b"
arrival = { process = "poisson", rate = 2.0 }
output_tokens = { dist = "exponential", mean = 120 }
"""


def write_sweep(tmp_path, text, scenario=SMALL):
    (tmp_path / "small.toml").write_text(scenario)
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return path


def test_local_table_equals_a_hand_run_of_the_same_variants_and_seeds(tmp_path):
    path = write_sweep(tmp_path, """
scenario = "mmc"
seeds = [3, 8, 9]
[set]
duration = 40.0
warmup = 4.0
[grid]
policy = ["balanced", "cheapest"]
scale.nodes = [0.5, 1]
"workload[0].arrival.rate" = [3.0, 6.0]
""")
    sweep = load_sweep(path)
    table = run_sweep(sweep, "local", jobs=2)
    assert run_sweep(sweep, "local", jobs=1).csv_text() == table.csv_text()
    assert len(table.rows) == 8 and table.parameters == (
        "variant", "scale.nodes", "workload[0].arrival.rate", "policy", "pricing")

    mmc = load_scenario("mmc").evolve(duration=40.0, warmup=4.0)
    expected = []
    for policy in ("balanced", "cheapest"):
        for nodes in (4, 8):  # 8 x 0.5, 8 x 1
            for rate in (3.0, 6.0):
                scenario = mmc.evolve(
                    nodes=(attrs.evolve(mmc.nodes[0], count=nodes),),
                    workloads=(attrs.evolve(mmc.workloads[0], arrival=Poisson(rate)),))
                runs = [run_scenario(scenario, policy, seed, pricing="static").summary
                        for seed in (3, 8, 9)]
                expected.append((policy, nodes / 8, rate, runs))
    for row, (policy, scale, rate, runs) in zip(table.rows, expected):
        assert (row["policy"], row["scale.nodes"], row["workload[0].arrival.rate"]) == (
            policy, scale, rate)
        assert row["pricing"] == "static" and row["seeds"] == 3
        for name, value in (
                ("latency_p99", [r["latency"]["p99"] for r in runs]),
                ("queue_wait_mean", [r["queue_wait"]["mean"] for r in runs]),
                ("utilization", [r["utilization"]["overall"] for r in runs]),
                ("cost_per_task", [r["cost"]["per_task_mean"] for r in runs]),
                ("completed", [r["tasks"]["completed"] for r in runs]),
                ("throughput", [r["tasks"]["completed"] / r["sim_seconds"] for r in runs])):
            mean, half_width = confidence_interval(value)
            assert row[name] == pytest.approx(mean, rel=1e-8), name
            assert row[f"{name}_ci95"] == pytest.approx(half_width, rel=1e-8, abs=1e-12), name
    # more load -> more tasks and a busier fleet; a bigger fleet -> less busy
    assert table.rows[1]["completed"] > table.rows[0]["completed"]
    assert table.rows[1]["utilization"] > table.rows[3]["utilization"]


def test_cli_writes_csv_and_json_of_the_same_table(tmp_path, capsys):
    path = write_sweep(tmp_path, """
name = "two"
scenario = "small.toml"
seeds = 2
[grid]
pricing = ["static", "dynamic"]
""")
    csv_path, json_path = tmp_path / "t.csv", tmp_path / "t.json"
    assert main(["sweep", str(path), "--csv", str(csv_path), "--json", str(json_path)]) == 0
    assert "2 variants of small, 2 rows x 2 seeds = 4 runs" in capsys.readouterr().out
    lines = csv_path.read_text().splitlines()
    header = lines[0].split(",")
    assert header[:5] == ["variant", "policy", "pricing", "seeds", "latency_mean"]
    assert len(header) == 4 + 2 * len(METRICS) and len(lines) == 3
    data = json.loads(json_path.read_text())
    assert data["sweep"] == "two" and data["seeds"] == [11, 12]  # the scenario's seed, +1
    assert [row["pricing"] for row in data["rows"]] == ["static", "dynamic"]
    assert [line.split(",")[2] for line in lines[1:]] == ["static", "dynamic"]
    assert float(lines[1].split(",")[header.index("completed")]) == data["rows"][0]["completed"]


def test_the_bundled_example_sweep():
    sweep = load_sweep("example")
    assert len(sweep.variants) == 18 and len(sweep.runs()) == 54
    assert {v.scenario.duration for v in sweep.variants} == {120.0}
    counts = sorted({sum(g.count for g in v.scenario.nodes) for v in sweep.variants})
    assert counts == [6, 12]  # default's 6 + 4 + 2 nodes, halved: 3 + 2 + 1


def test_override_keys_wildcards_and_multipliers():
    assert parse_key("workload[1].arrival.rate", "k", "s") == ("workload", 1, "arrival", "rate")
    assert parse_key("nodes.0.count", "k", "s") == parse_key("nodes[0].count", "k", "s")
    doc = {"nodes": [{"count": 3, "gpu": "A100"}, {"count": 1, "gpu": "H100"}],
           "workload": [{"arrival": {"process": "bursty", "rate": 2.0, "off_rate": 0.5}},
                        {"arrival": {"process": "mmpp", "rates": [1.0, 4.0]}},
                        {"arrival": {"process": "trace", "file": "t.csv", "time_scale": 0.5}}]}

    def fail(*args):
        raise AssertionError(args)

    out = apply_overrides(doc, [(("scale", "nodes"), 1.5), (("nodes", "*", "slots"), 2),
                                (("network", "latency", "eu"), 0.03), (("scale", "rate"), 2)],
                          fail)
    assert [(g["count"], g["slots"]) for g in out["nodes"]] == [(5, 2), (2, 2)]  # 4.5 -> 5
    assert out["workload"][0]["arrival"] == {"process": "bursty", "rate": 4.0, "off_rate": 1.0}
    assert out["workload"][1]["arrival"]["rates"] == [2.0, 8.0]
    assert out["workload"][2]["arrival"]["time_scale"] == 0.25  # replayed twice as fast
    assert out["network"] == {"latency": {"eu": 0.03}}
    assert doc["nodes"][0] == {"count": 3, "gpu": "A100"}  # the base is untouched


# (sweep file, words the one error line must hold)
BAD = [
    ('scenario = "small.toml"\nseeds = 2\ncolour = 1', ["sweep.toml: colour: ", "no such key"]),
    ("seeds = 2", ["sweep.toml: scenario: ", "required"]),
    ('scenario = "small.toml"', ["sweep.toml: seeds: ", "required"]),
    ('scenario = "small.toml"\nseeds = 0', ["seeds: expected a count >= 1", "got 0"]),
    ('scenario = "small.toml"\nseeds = [1, 1]', ["seeds: expected distinct seeds"]),
    ('scenario = "nowhere"\nseeds = 2', ["sweep.toml: scenario: ", "bundled scenario"]),
    ('scenario = "gone.toml"\nseeds = 2', ["sweep.toml: scenario: ", "gone.toml: expected a readable"]),
    ('scenario = "small.toml"\nseeds = 2\n[grid]\nduration = 5.0',
     ["grid.duration: expected a non-empty list", "got 5.0"]),
    ('scenario = "small.toml"\nseeds = 2\n[grid]\n"nodes[5].count" = [1]',
     ["nodes[5]: expected an index < 2 (nodes has 2 entries)"]),
    ('scenario = "small.toml"\nseeds = 2\n[grid]\n"nodes[0].colour" = ["red"]',
     ['variant 0 (nodes[0].colour="red"): nodes[0].colour: ', "no such key"]),
    ('scenario = "small.toml"\nseeds = 2\n[grid]\n"workload[0].arrival.rate" = [1.0, -2.0]',
     ["variant 1 (workload[0].arrival.rate=-2.0): workload[0].arrival.rate: ",
      "expected a number > 0, got -2.0"]),
    ('scenario = "small.toml"\nseeds = 2\n[set]\nseed = 4', ["set.seed: expected no seed override"]),
    ('scenario = "small.toml"\nseeds = 2\n[grid]\nscale.gpus = [2]', ["grid.scale.gpus: ", "scale.nodes"]),
    ('scenario = "small.toml"\nseeds = 2\n[grid]\nscale.rate = [0]', ["scale.rate: expected a number > 0"]),
    ('scenario = "small.toml"\nseeds = 2\n[set]\nduration = 3.0\n[grid]\nduration = [4.0]',
     ["grid.duration: expected a key given once (it is also in [set])"]),
    ('scenario = "small.toml"\nseeds = 2\n[grid]\n"nodes[x].count" = [1]', ["grid.nodes[x].count: ",
                                                                            "a dotted key"]),
    ('scenario = "small.toml"\nseeds = 2\n[grid]\npolicy = ["psychic"]', ["policy: ", "round_robin"]),
    ('scenario = "small.toml"\nseeds = [', ["sweep.toml: expected valid TOML"]),
]


@pytest.mark.parametrize("text,words", BAD, ids=[w[0].split(":")[-2].strip() or w[0] for _, w in BAD])
def test_bad_sweep_file_gives_one_line_naming_the_key(tmp_path, capsys, text, words):
    path = write_sweep(tmp_path, text)
    assert main(["sweep", str(path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and captured.out == "", lines
    assert lines[0].startswith(f"python -m sim sweep: error: {path}")
    for word in words:
        assert word in lines[0]


def test_unknown_backend_and_missing_ray(tmp_path, capsys, monkeypatch):
    path = write_sweep(tmp_path, 'scenario = "small.toml"\nseeds = 1')
    assert main(["sweep", str(path), "--backend", "slurm"]) == 2
    assert "--backend: expected one of: local, ray, got 'slurm'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: import fails
    assert main(["sweep", str(path), "--backend", "ray"]) == 2
    assert "pip install 'neurogrid[ray]'" in capsys.readouterr().err
    with pytest.raises(BackendUnavailable):
        run_sweep(load_sweep(path), "ray")


@pytest.fixture
def local_ray():
    ray = pytest.importorskip("ray", reason="the ray backend needs Ray: pip install 'neurogrid[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_backend_gives_the_local_table_for_200_runs(tmp_path, local_ray):
    path = write_sweep(tmp_path, """
scenario = "small.toml"
seeds = 10
[grid]
policy = ["round_robin", "least_loaded", "cheapest", "fastest", "balanced"]
pricing = ["static", "dynamic"]
scale.rate = [1, 3]
""")
    sweep = load_sweep(path)
    assert len(sweep.runs()) == 200
    seen = []
    on_ray = run_sweep(sweep, "ray", progress=lambda done, total: seen.append((done, total)))
    assert local_ray.is_initialized()  # the sweep used the test's Ray instance, left it running
    assert seen[-1] == (200, 200)
    local = run_sweep(sweep, "local", jobs=2)
    assert on_ray.csv_text() == local.csv_text()
    assert on_ray.json_text() == local.json_text()
    # the rows really differ: the policies place differently on the mixed fleet
    assert len({row["cost_total"] for row in local.rows}) > 5
    assert set(BACKENDS) == {"local", "ray"}
