# Same-run comparison against an earlier revision:
#     python -m benchmarks --versus REV [--rounds N] [--only ...] [--quick]
#
# Why: a figure measured on another day is not a baseline. The shared machine's
# speed drifts by a third from one day to the next (GET /health served 1,874
# req/s on one day and 1,274 on another with the same code), which is larger
# than most changes worth measuring. So "did this change make the runtime
# slower?" is answered by running the old code and the new code in the same
# session, interleaved, and comparing their figures.
#
# Theory of operation:
# - REV is exported with `git archive` into a temporary directory (no worktree, no
#   checkout of this tree is touched). Both trees run with the *same* interpreter
#   and installed packages; only the project's own packages differ. Each run is a
#   child `python -m benchmarks --only NAMES --json FILE` whose working directory
#   and PYTHONPATH are the tree, so the tree's `engine`, `api`, `sim` and
#   `benchmarks` shadow the installed ones, also in the worker processes the
#   benchmarks spawn.
# - Rounds alternate the order (A B, B A, A B, ...), so a slow drift of the machine
#   during the session weighs on both trees alike.
# - For every figure present in both trees (same benchmark, same row case, same
#   figure name, numeric in every round), the medians over the rounds are
#   compared: `here/base` is the ratio of the medians. A figure's direction
#   (higher or lower is better) comes from the rules in `DIRECTION` (by figure
#   name, then by row case); a figure no rule covers is shown with `?` and never
#   judged.
# - A judged figure is WORSE (or better) only when two things hold: its median
#   moved the wrong (right) way by more than `--tolerance` (default 5%), *and*
#   the runs separate: every run of the worse tree is worse than every run of
#   the other. A median past the tolerance whose runs overlap is `unsure`.
#   Why both: medians alone are below this machine's noise floor. An A/A run
#   (`--versus HEAD --only api --rounds 3`, the same code on both sides,
#   2026-12-01) judged 20 of 36 figures WORSE by medians (POST's server CPU a
#   request 1.138, ratio_to_trivial 0.737). A second A/A run with the rule in
#   place (2026-12-02) judged 0 of 36 WORSE and 14 unsure, the widest move a
#   median made being POST's req/s at 0.830 with the runs overlapping.
#   Separation is a rank test: for identical code, the chance that N runs a
#   tree fall wholly one given side of the other N is 1 / C(2N, N): 1/2 at one
#   round, 1/6 at two, 1/20 (p = 0.05) at three, 1/70 at four. So one round
#   judges by the medians alone, as before, and three is the fewest rounds
#   whose WORSE means something.
# Cost: rounds x (the chosen benchmarks' time) x 2.
from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import attrs

# (pattern, where it is matched, +1 when higher is better / -1 when lower is).
# The first rule that matches decides. "figure" rules look at the figure's name,
# "case" rules at the row's case (e.g. the placement rows whose figures are named
# by fleet size, "1,000 nodes", and measure decisions per second).
DIRECTION: tuple[tuple[str, str, int], ...] = (
    (r"^context", "case", 0),                       # a reference figure, not ours
    (r"(simpy|^direct_|^budget)", "figure", 0),     # the baselines measured beside ours
    (r"^(tasks|events|accepted|db_rows|completed|steps|seconds|audio_s|utilization|"
     r"peak_outstanding|journal_steps|requeued_by_kill|crashes_seen|first_after)$",
     "figure", 0),                                  # sizes and counts, not speed
    (r"(lost|ran_twice|reported_twice|failed|error|wer)", "figure", -1),
    # cpu_ratio_to_trivial is /health's CPU a request over POST's: like
    # ratio_to_trivial, nearer 1 (a POST costing what a trivial request does) is better
    (r"(per_s|tok_s|speedup|x naive|^(cpu_)?ratio_to_trivial$|^ratio$|ours_over_theirs|"
     r"cycles/s|ceiling_ratio)", "figure", +1),
    (r"(_ms|_us|_s$|_mb|^ms$|slowdown|p50/|/direct|direct/|end/first|"
     r"rtf|step/unet|overhead)", "figure", -1),
    (r"decisions/s", "case", +1),
)


def direction(case: str, figure: str) -> int | None:
    """+1 if a higher figure is better, -1 if lower is, 0 for a size that is not
    judged, None when no rule knows the figure."""
    for pattern, where, sign in DIRECTION:
        if re.search(pattern, figure if where == "figure" else case):
            return sign
    return None


@attrs.frozen
class Compared:
    """One figure of one row, in both trees: its value in every round."""

    benchmark: str
    case: str
    figure: str
    base_runs: tuple[float, ...]
    here_runs: tuple[float, ...]
    sign: int | None

    @property
    def base(self) -> float:
        return statistics.median(self.base_runs)

    @property
    def here(self) -> float:
        return statistics.median(self.here_runs)

    @property
    def ratio(self) -> float:
        return self.here / self.base if self.base else float("nan")

    def separated(self) -> int:
        """+1 when every run here is better than every base run, -1 when every run
        here is worse, 0 when they overlap (or the figure is not judged)."""
        if not self.sign:
            return 0
        here = [v * self.sign for v in self.here_runs]  # higher is better now
        base = [v * self.sign for v in self.base_runs]
        if min(here) > max(base):
            return +1
        if max(here) < min(base):
            return -1
        return 0

    def verdict(self, tolerance: float) -> str:
        if not self.sign or self.base == 0:
            return "?" if self.sign is None else ""
        change = (self.ratio - 1.0) * self.sign
        if abs(change) <= tolerance:
            return "same"
        moved = 1 if change > 0 else -1
        if self.separated() != moved:
            return "unsure"  # past the tolerance, but the runs overlap
        return "better" if moved > 0 else "WORSE"


Report = Mapping[str, object]


def figures_of(report: Report) -> dict[tuple[str, str, str], float]:
    """(benchmark, case, figure) -> value, for every numeric figure of a report."""
    out: dict[tuple[str, str, str], float] = {}
    benchmarks = report.get("benchmarks", [])
    assert isinstance(benchmarks, list)
    for bench in benchmarks:
        for row in bench["rows"]:
            for name, value in row["figures"].items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    out[(bench["name"], row["case"], name)] = float(value)
    return out


def compare(base_rounds: Sequence[Report], here_rounds: Sequence[Report]) -> list[Compared]:
    """The figures both trees report in every round, with their values in each."""
    base = [figures_of(r) for r in base_rounds]
    here = [figures_of(r) for r in here_rounds]
    if not base or not here:
        return []
    common = set.intersection(*(set(f) for f in base + here))
    ordered = [k for k in here[0] if k in common]  # the report's own order
    return [Compared(b, c, f, tuple(r[(b, c, f)] for r in base),
                     tuple(r[(b, c, f)] for r in here), direction(c, f))
            for b, c, f in ordered]


def render(rows: Iterable[Compared], tolerance: float, base_name: str) -> str:
    lines = [f"{'benchmark / case / figure':<78} {base_name:>12} {'here':>12} "
             f"{'here/base':>9}  verdict"]
    for row in rows:
        label = f"{row.benchmark} | {row.case} | {row.figure}"
        lines.append(f"{label[:78]:<78} {row.base:>12.4g} {row.here:>12.4g} "
                     f"{row.ratio:>9.3f}  {row.verdict(tolerance)}")
    return "\n".join(lines)


def export(rev: str, into: Path, repo: Path) -> str:
    """Write the tree of `rev` into `into`; return its full commit id."""
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                            capture_output=True, text=True)
    if commit.returncode != 0:
        raise SystemExit(f"--versus {rev}: not a commit of {repo} ({commit.stderr.strip()})")
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", commit.stdout.strip()],
                             capture_output=True, check=True)
    with tempfile.TemporaryFile() as tar_file:
        tar_file.write(archive.stdout)
        tar_file.seek(0)
        with tarfile.open(fileobj=tar_file) as tar:
            tar.extractall(into, filter="data")
    return commit.stdout.strip()


def run_tree(tree: Path, name: str, quick: bool, json_path: Path) -> Report | None:
    """One `python -m benchmarks --only NAME` run of the tree: its JSON report, or
    None when the run failed (an older tree may not have that benchmark yet)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tree), *filter(None, [os.environ.get("PYTHONPATH")])]))
    command = [sys.executable, "-m", "benchmarks", "--only", name, "--json", str(json_path)]
    if quick:
        command.append("--quick")
    print(f"-- {tree}: {' '.join(command[1:])}", flush=True)
    if subprocess.run(command, cwd=tree, env=env).returncode != 0:
        return None
    report: Report = json.loads(json_path.read_text())
    return report


def merged(reports: Sequence[Report]) -> Report:
    """The benchmarks of several one-benchmark reports as one report."""
    benchmarks: list[object] = []
    for one in reports:
        entries = one.get("benchmarks", [])
        assert isinstance(entries, list)
        benchmarks.extend(entries)
    return {"benchmarks": benchmarks}


def run_versus(rev: str, names: Sequence[str], quick: bool, rounds: int, tolerance: float,
               json_path: str | None) -> int:
    here = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="neurogrid-versus-") as tmp:
        base_tree = Path(tmp) / "base"
        base_tree.mkdir()
        commit = export(rev, base_tree, here)
        runs: dict[str, list[Report]] = {"base": [], "here": []}
        trees = {"base": base_tree, "here": here}
        skipped: list[str] = []  # benchmarks the base tree could not run
        for index in range(rounds):
            order = ["base", "here"] if index % 2 == 0 else ["here", "base"]
            reports: dict[str, list[Report]] = {"base": [], "here": []}
            for label in order:
                for name in names:
                    if name in skipped:
                        continue
                    report = run_tree(trees[label], name, quick,
                                      Path(tmp) / f"{label}-{index}-{name}.json")
                    if report is None and label == "here":
                        raise SystemExit(f"--versus: benchmark {name!r} failed in this tree")
                    if report is None:
                        print(f"-- {rev} cannot run benchmark {name!r}: not compared")
                        skipped.append(name)  # compare() keeps what every round has
                        continue
                    reports[label].append(report)
            for label in order:
                runs[label].append(merged(reports[label]))
    base_runs, here_runs = runs["base"], runs["here"]
    rows = compare(base_runs, here_runs)
    print(f"\n== versus {rev} ({commit[:12]}), {rounds} round(s) each, medians; "
          f"judged with a {tolerance:.0%} tolerance")
    print(render(rows, tolerance, rev[:12]))
    verdicts = [r.verdict(tolerance) for r in rows]
    print(f"{verdicts.count('WORSE')} judged figure(s) worse and {verdicts.count('unsure')} "
          f"unsure (past the tolerance, runs overlapping), of {sum(1 for r in rows if r.sign)} "
          f"judged")
    if rounds < 3:
        print(f"(with {rounds} round(s) a tree, identical code separates one given way with "
              f"a chance of 1 in {math.comb(2 * rounds, rounds)}: use --rounds 3 or more)")
    if skipped:
        print(f"not compared (the base tree has no such benchmark): {', '.join(skipped)}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"base": rev, "base_commit": commit, "rounds": rounds,
                       "tolerance": tolerance, "not_compared": skipped,
                       "figures": [dict(attrs.asdict(r), base=r.base, here=r.here,
                                        ratio=r.ratio, verdict=r.verdict(tolerance))
                                   for r in rows],
                       "base_runs": base_runs, "here_runs": here_runs}, f, indent=2)
        print(f"wrote {json_path}")
    return 0
