"""`python -m benchmarks --versus REV`: which figures are judged and how, the
comparison of medians, and the export of a revision."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from benchmarks.__main__ import main
from benchmarks.versus import compare, direction, export


def report(figures: dict[str, dict[str, float | str]], bench: str = "runtime") -> dict[str, object]:
    return {"quick": True, "benchmarks": [
        {"name": bench, "rows": [{"case": case, "figures": values, "target": "", "met": None}
                                 for case, values in figures.items()]}]}


@pytest.mark.parametrize(("case", "figure", "sign"), [
    ("overhead: submit -> assign on the wire", "p50_ms", -1),
    ("overhead: submit -> assign on the wire", "p50/direct", -1),
    ("throughput: coordinator + 4 no-op workers", "tasks_per_s", +1),
    ("throughput: coordinator + 4 no-op workers", "direct_noop_per_s", 0),
    ("M/M/c c=10,000: ours vs SimPy", "ratio", +1),
    ("M/M/c c=10,000: ours vs SimPy", "simpy_tasks_per_s", 0),
    ("balanced (default) decisions/s", "10,000 nodes", +1),
    ("balanced (default) decisions/s", "slowdown 100k/1k", -1),
    ("balanced (default) decisions/s", "x naive @10k", +1),
    ("POST /api/tasks (durable commit)", "ratio_to_trivial", +1),
    ("POST /api/tasks (durable commit)", "cpu_ratio_to_trivial", +1),
    ("soak: 100,000 tasks, 9 worker kills", "lost", -1),
    ("soak: 100,000 tasks, 9 worker kills", "accepted", 0),
    ("soak: server RSS, end vs first tenth", "end/first", -1),
    ("soak: throughput, end to end", "server_cpu_ms_per_task", -1),
    ("context: demo model, 16 tokens, direct", "ms", 0),
    ("large: 1,000,000 tasks, 10,000 nodes", "utilization", 0),
    ("some new row", "some_new_figure", None),
])
def test_each_figure_is_judged_in_the_direction_that_is_better(case: str, figure: str,
                                                              sign: int | None) -> None:
    assert direction(case, figure) == sign


def test_medians_of_the_figures_both_trees_report_are_compared() -> None:
    case = "overhead: submit -> assign on the wire"
    base = [report({case: {"p50_ms": v, "only_base": 1.0}}) for v in (0.20, 0.30, 0.21)]
    here = [report({case: {"p50_ms": v, "label": "x"}}) for v in (0.10, 0.11, 0.50)]
    rows = compare(base, here)
    assert [(r.case, r.figure) for r in rows] == [(case, "p50_ms")]  # only common numbers
    (row,) = rows
    assert (row.base, row.here) == (0.21, 0.11)
    assert row.ratio == pytest.approx(0.11 / 0.21)
    assert (row.base_runs, row.here_runs) == ((0.20, 0.30, 0.21), (0.10, 0.11, 0.50))
    # the median is better by half, but one run here (0.50) is worse than every
    # base run: the runs overlap, so the move is not judged
    assert row.verdict(0.05) == "unsure"


@pytest.mark.parametrize(("base_runs", "here_runs", "verdict"), [
    ((2000.0, 2010.0, 1990.0), (1800.0, 1850.0, 1700.0), "WORSE"),    # every run lower
    ((2000.0, 2010.0, 1990.0), (1800.0, 2020.0, 1700.0), "unsure"),   # one run above them all
    ((2000.0, 2010.0, 1990.0), (2300.0, 2200.0, 2400.0), "better"),   # every run higher
    ((2000.0, 2010.0, 1990.0), (2300.0, 1980.0, 2400.0), "unsure"),   # one run below them all
    ((2000.0, 1500.0, 2500.0), (2050.0, 2010.0, 1995.0), "same"),     # medians within 5%
])
def test_a_move_past_the_tolerance_is_judged_only_when_the_runs_separate(
        base_runs: tuple[float, ...], here_runs: tuple[float, ...], verdict: str) -> None:
    case = "throughput: coordinator + 4 no-op workers"
    (row,) = compare([report({case: {"tasks_per_s": v}}) for v in base_runs],
                     [report({case: {"tasks_per_s": v}}) for v in here_runs])
    assert row.verdict(0.05) == verdict


def test_separation_reads_a_lower_is_better_figure_the_other_way_round() -> None:
    case = "overhead: submit -> assign on the wire"
    base = [report({case: {"p50_ms": v}}) for v in (0.20, 0.21, 0.22)]
    (slower,) = compare(base, [report({case: {"p50_ms": v}}) for v in (0.25, 0.24, 0.26)])
    (faster,) = compare(base, [report({case: {"p50_ms": v}}) for v in (0.15, 0.16, 0.19)])
    assert (slower.separated(), slower.verdict(0.05)) == (-1, "WORSE")
    assert (faster.separated(), faster.verdict(0.05)) == (+1, "better")


def test_a_move_the_wrong_way_beyond_the_tolerance_is_worse_and_within_it_the_same() -> None:
    case = "throughput: coordinator + 4 no-op workers"
    base = [report({case: {"tasks_per_s": 2000.0, "mystery": 1.0}})]
    (slower, mystery) = compare(base, [report({case: {"tasks_per_s": 1800.0, "mystery": 9.0}})])
    assert slower.verdict(0.05) == "WORSE"
    assert slower.verdict(0.15) == "same"
    assert mystery.verdict(0.05) == "?"  # no rule knows it: shown, never judged


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_a_revision_is_exported_as_its_tree_without_touching_the_checkout(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "a.txt").write_text("old")
    git(repo, "add", "a.txt")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    first = git(repo, "rev-parse", "HEAD")
    (repo / "a.txt").write_text("new")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", "two")
    out = tmp_path / "out"
    out.mkdir()
    assert export("HEAD~1", out, repo) == first
    assert (out / "a.txt").read_text() == "old"
    assert (repo / "a.txt").read_text() == "new"
    with pytest.raises(SystemExit, match="--versus no-such-rev: not a commit"):
        export("no-such-rev", out, repo)


def test_bad_versus_settings_are_refused_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--versus", "HEAD", "--rounds", "0"])
    assert "--rounds: must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--versus", "HEAD", "--tolerance", "2"])
    assert "--tolerance" in capsys.readouterr().err
