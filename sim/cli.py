# The command line: python -m sim [SCENARIO] [--policy A,B] [--seed N] [--json FILE] ...
#
# Rules:
# - Bad input (a scenario error, an unknown policy on the command line, a plot without
#   matplotlib) prints one line `python -m sim: error: ...` on stderr and exits 2; no
#   traceback ever reaches the user for an input mistake.
# - The table goes to stdout; the progress bar goes to stderr, and only when stderr
#   is a terminal and the comparison has already taken a couple of seconds.
from __future__ import annotations

import argparse
import gzip
import os
import sys
import time
from pathlib import Path
from typing import Mapping, TextIO

from engine.core import POLICIES, PRICING

from .loop import RunResult, journal_header
from .replay import (
    Session, check_session, load_sessions, pick_session, scenario_from_session, write_session,
)
from .report import PlotUnavailable, compare, format_markdown, format_table, plot, write_json
from .scenario import DEFAULT_SCENARIO, ScenarioError, bundled_scenarios, load_scenario

PROG = "python -m sim"
PROGRESS_AFTER = 2.0  # seconds before a progress bar appears


class ProgressBar:
    """`[#####.....]  45%  run 2/7` on one rewritten stderr line."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream, self.width = stream, width
        self.started = time.monotonic()
        self.shown = False

    def __call__(self, run: int, runs: int, fraction: float) -> None:
        if not self.shown and time.monotonic() - self.started < PROGRESS_AFTER:
            return
        self.shown = True
        done = (run + fraction) / runs
        filled = int(done * self.width)
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] "
                          f"{100 * done:3.0f}%  run {run + 1}/{runs}")
        self.stream.flush()

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * (self.width + 24) + "\r")
            self.stream.flush()


def _names(text: str | None, known: Mapping[str, object], option: str) -> tuple[str, ...] | None:
    if text is None:
        return None
    if text == "all":
        return tuple(known)
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        if name not in known:
            raise ScenarioError("command line", option, f"one of: {', '.join(known)}, or all",
                                name)
    return names or None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Discrete-event simulation of a NeuroGrid network on the "
        "real scheduling core. See sim/README.md for the scenario format; "
        "`python -m sim sweep --help` for sweeps of variants x seeds.")
    p.add_argument("scenario", nargs="?",
                   help="a scenario .toml file or a bundled scenario name "
                        f"(default: {DEFAULT_SCENARIO}; see --list)")
    p.add_argument("--replay", metavar="JOURNAL",
                   help="instead of a scenario, a live coordinator's journal "
                        "(neurogrid serve --journal): its traffic and fleet, run under the "
                        "policies given (default: the one it ran)")
    p.add_argument("--session", type=int, metavar="N",
                   help="with --replay: which session of the journal (1-based; default: "
                        "the last)")
    p.add_argument("--check", action="store_true",
                   help="with --replay: feed the recorded events to a fresh scheduler and "
                        "check that it decides exactly as recorded (exit 1 if not)")
    p.add_argument("--list", action="store_true", help="list the bundled scenarios")
    p.add_argument("--policy", help="placement policies to compare, comma-separated, or "
                                    "'all' (default: the scenario's)")
    p.add_argument("--pricing", help="pricing policies, comma-separated, or 'all'")
    p.add_argument("--seed", type=int, help="random seed (default: the scenario's)")
    p.add_argument("--replications", type=int, metavar="N",
                   help="runs per configuration (seeds seed..seed+N-1); N > 1 adds 95%% "
                        "confidence intervals")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="runs at once, in worker processes (0: one per CPU core; "
                        "default 1). The results do not depend on it")
    p.add_argument("--duration", type=float, metavar="SECONDS",
                   help="override the scenario's duration (seconds of arrivals)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--plot", metavar="FILE.png",
                   help="latency CDFs and utilization over time (needs matplotlib)")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--journal", metavar="FILE",
                   help="write every run's journal (each event fed to the scheduler and "
                        "its decisions; one session per run) in the live coordinator's "
                        "format, for --replay FILE --check (FILE.gz: compressed)")
    return p


def list_scenarios(out: TextIO) -> None:
    for name, path in bundled_scenarios().items():
        try:
            scenario = load_scenario(path)
            about = scenario.description.strip().splitlines()[0] if scenario.description else ""
        except ScenarioError as exc:
            about = f"(invalid: {exc})"
        out.write(f"{name:<20} {about}\n")


def check_journal(sessions: list[Session], number: int | None, source: str,
                  out: TextIO) -> int:
    """`--replay FILE --check`: 0 when every checked session decides as recorded."""
    if number is not None:
        pick_session(sessions, number, source)  # a number out of range: ScenarioError
    chosen = range(1, len(sessions) + 1) if number is None else [number]
    status = 0
    for n in chosen:
        header, steps = sessions[n - 1]
        about = f"session {n} ({header.policy}, {header.pricing}, seed {header.seed!r})"
        divergence = check_session(header, steps)
        if divergence is None:
            out.write(f"{about}: {len(steps):,} steps, every decision as recorded\n")
            continue
        status = 1
        entry = divergence.entry
        out.write(f"{about}: step {divergence.step} at t={entry.time:.6f} "
                  f"({type(entry.event).__name__}) decides otherwise\n"
                  f"  recorded: {list(entry.decisions)}\n"
                  f"  replayed: {list(divergence.replayed)}\n")
    return status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sweep"]:  # python -m sim sweep SWEEP.toml: see sweep_cli.py
        from .sweep_cli import main as sweep_main
        return sweep_main(argv[1:])
    args = parser().parse_args(argv)
    if args.list:
        list_scenarios(sys.stdout)
        return 0
    try:
        if args.replications is not None and args.replications < 1:
            raise ScenarioError("command line", "--replications", "an integer >= 1",
                                args.replications)
        if args.jobs < 0:
            raise ScenarioError("command line", "--jobs", "an integer >= 0", args.jobs)
        jobs = args.jobs or os.cpu_count() or 1
        if args.seed is not None and args.seed < 0:
            raise ScenarioError("command line", "--seed", "an integer >= 0", args.seed)
        if args.replay is not None:
            if args.scenario is not None:
                raise ScenarioError("command line", "--replay",
                                    "either a scenario or --replay, not both", args.scenario)
            if args.duration is not None:
                raise ScenarioError("command line", "--duration",
                                    "no --duration with --replay (the journal's length rules)",
                                    args.duration)
            sessions = load_sessions(args.replay)
            if args.check:
                return check_journal(sessions, args.session, args.replay, sys.stdout)
            header, steps = pick_session(sessions, args.session, args.replay)
            number = args.session or len(sessions)
            scenario = scenario_from_session(header, steps,
                                             f"{Path(args.replay).name}#{number}",
                                             f"{args.replay} session {number}")
        elif args.check or args.session is not None:
            raise ScenarioError("command line", "--check" if args.check else "--session",
                                "--replay JOURNAL with it")
        else:
            scenario = load_scenario(args.scenario or DEFAULT_SCENARIO)
        if args.duration is not None:
            if not scenario.warmup < args.duration:
                raise ScenarioError("command line", "--duration",
                                    f"a number > warmup ({scenario.warmup:g})", args.duration)
            scenario = scenario.evolve(duration=args.duration)
        policies = _names(args.policy, POLICIES, "--policy")
        pricings = _names(args.pricing, PRICING, "--pricing")
        if args.plot:  # fail before a long run, not after it
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                raise PlotUnavailable(
                    "--plot needs matplotlib: pip install 'neurogrid[plot]'") from None
    except (ScenarioError, PlotUnavailable) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    bar = ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    journal = None
    try:
        if args.journal:
            try:
                journal = (gzip.open(args.journal, "wt", encoding="utf-8")
                           if args.journal.endswith(".gz")
                           else open(args.journal, "w", encoding="utf-8"))
            except OSError as exc:
                print(f"{PROG}: error: {args.journal}: cannot write the journal "
                      f"({exc.strerror})", file=sys.stderr)
                return 2

        def record(result: RunResult, policy: str, pricing: str, seed: int) -> None:
            assert journal is not None and result.log is not None
            write_session(journal, journal_header(scenario, policy, pricing, seed), result.log)

        configs = compare(scenario, policies, pricings, args.seed, args.replications, bar,
                          record if journal is not None else None, jobs)
    finally:
        if bar is not None:
            bar.close()
        if journal is not None:
            journal.close()
    title = scenario.name + (f": {scenario.description.strip().splitlines()[0]}"
                             if scenario.description else "")
    print(title)
    print(format_markdown(configs) if args.markdown else format_table(configs))
    if args.json:
        write_json(configs, args.json)
        print(f"wrote {args.json}")
    if args.journal:
        print(f"wrote {args.journal}")
    if args.plot:
        plot(configs, args.plot, scenario.name)
        print(f"wrote {args.plot}")
    return 0
