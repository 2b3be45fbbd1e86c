"""Bad input: one line naming the file, the key and what was expected; exit 2."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sim import ScenarioError, load_scenario
from sim.cli import main

GOOD = """
name = "t"
duration = 60.0
[[nodes]]
count = 2
gpu = "RTX 4090"
[[workload]]
model = "llama2:7b"
arrival = { process = "poisson", rate = 1.0 }
"""

# (replace this, with this) in GOOD -> (key the message must name, words it must say)
CASES = [
    (('name = "t"', 'name = "t"\ncolour = "red"'), ("colour", "no such key")),
    (("count = 2", 'count = "two"'), ("nodes[0].count", "an integer >= 1")),
    (("count = 2", "count = 2\nslot = 1"), ("nodes[0].slot", "no such key")),
    (('gpu = "RTX 4090"', 'gpu = "RTX 9090"'), ("nodes[0].gpu", "RTX 4090")),
    (('model = "llama2:7b"', 'model = "gpt-5"'), ("workload[0].model", "llama2:7b")),
    (('name = "t"', 'name = "t"\npolicy = "smartest"'), ("policy", "round_robin")),
    (('name = "t"', 'name = "t"\npricing = ["static", "free"]'), ("pricing[1]", "dynamic")),
    (("rate = 1.0", "rate = -1.0"), ("workload[0].arrival.rate", "a number > 0")),
    (('process = "poisson", rate = 1.0', 'process = "poison", rate = 1.0'),
     ("workload[0].arrival.process", "poisson")),
    (('process = "poisson", rate = 1.0', 'process = "trace", file = "nowhere.csv"'),
     ("workload[0].arrival.file", "an existing trace CSV file")),
    (("rate = 1.0 }", 'rate = 1.0 }\nsteps = { dist = "zipf" }'),
     ("workload[0].steps.dist", "lognormal")),
    (("rate = 1.0 }", 'rate = 1.0 }\noutput_tokens = { dist = "lognormal", median = 5 }'),
     ("workload[0].output_tokens.sigma", "required")),
    (("duration = 60.0", "duration = 60.0\nwarmup = 90.0"), ("warmup", "< duration")),
    (("duration = 60.0", "duration = true"), ("duration", "a number")),
    (('name = "t"', 'name = "t"\n[network]\nlatency = { eu = "far" }'),
     ("network.latency.eu", "a number")),
    (("[[workload]]", "[[workload]]\npriority = \"urgent\""),
     ("workload[0].priority", "standard, high or critical")),
    (('gpu = "RTX 4090"', 'gpu = "RTX 4090"\nvram_gb = 8.0\nmodels = ["whisper"]'),
     ("nodes[0].models[0]", "fits in 8 GB")),
    (('duration = 60.0', 'duration = 60.0\n['), ("", "valid TOML")),
]


@pytest.mark.parametrize("change,expected", CASES, ids=[c[1][0] or "toml" for c in CASES])
def test_bad_scenario_gives_one_line_naming_file_and_key(tmp_path, capsys, change, expected):
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace(*change))
    assert main([str(path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and captured.out == ""
    key, words = expected
    assert str(path) in lines[0] and f": {key}: " in lines[0] if key else str(path) in lines[0]
    assert words in lines[0]


def test_the_good_scenario_is_good(tmp_path):
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    assert load_scenario(path).nodes[0].count == 2


def test_unknown_bundled_name_and_command_line_policy(capsys):
    assert main(["no-such-scenario"]) == 2
    assert "bundled scenario, one of:" in capsys.readouterr().err
    assert main(["default", "--seed", "-1"]) == 2
    assert "--seed: expected an integer >= 0" in capsys.readouterr().err
    assert main(["default", "--policy", "balanced,psychic"]) == 2
    err = capsys.readouterr().err
    assert "--policy" in err and "psychic" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ScenarioError, match="azure-conv"):
        load_scenario("azure-conf")


def test_no_traceback_from_the_real_command(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace("count = 2", "count = 0"))
    done = subprocess.run([sys.executable, "-m", "sim", str(path)], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 2
    assert done.stderr.strip() == (f"python -m sim: error: {path}: nodes[0].count: "
                                   "expected an integer >= 1, got 0")


def test_list_names_every_bundled_scenario(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in ("mmc", "hetero", "azure-conv", "failures", "priority-overload", "pricing"):
        assert name in out
