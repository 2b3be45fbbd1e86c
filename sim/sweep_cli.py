# The sweep command line: python -m sim sweep SWEEP.toml [--backend local|ray] [--jobs N]
#                                              [--csv FILE] [--json FILE]
#
# Rules (as for `python -m sim`, cli.py): bad input (a sweep or scenario error, an
# unknown backend, a backend whose engine is not installed) prints one line
# `python -m sim sweep: error: ...` on stderr and exits 2, before any run. The table
# goes to stdout; a progress bar goes to stderr, only when it is a terminal.
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from .backends import BACKENDS, DEFAULT_BACKEND, BackendUnavailable
from .scenario import ScenarioError
from .sweep import bundled_sweeps, format_sweep, load_sweep, run_sweep

PROG = "python -m sim sweep"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Run a grid of scenario variants x seeds and write one table "
        "of means with 95%% confidence intervals. See sim/README.md, \"Sweeps\".")
    p.add_argument("sweep", nargs="?", help="a sweep .toml file or a bundled sweep name "
                                            f"({', '.join(bundled_sweeps())})")
    p.add_argument("--list", action="store_true", help="list the bundled sweeps")
    p.add_argument("--backend", default=DEFAULT_BACKEND, metavar="NAME",
                   help="where the runs execute: " + "; ".join(
                       f"{b.name}: {b.about}" for b in BACKENDS.values())
                   + f" (default: {DEFAULT_BACKEND})")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="local: worker processes; ray: CPUs of the local Ray instance it "
                        "starts (0: one per core; default 1). The table does not depend on it")
    p.add_argument("--csv", metavar="FILE", help="write the table as CSV")
    p.add_argument("--json", metavar="FILE", help="write the table as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.list:
        for name, path in bundled_sweeps().items():
            try:
                about = load_sweep(path).description.strip().splitlines()[0]
            except (ScenarioError, IndexError) as exc:
                about = f"(invalid: {exc})" if isinstance(exc, ScenarioError) else ""
            print(f"{name:<20} {about}")
        return 0
    try:
        if args.sweep is None:
            raise ScenarioError("command line", "SWEEP", "a sweep .toml file or a bundled sweep")
        if args.backend not in BACKENDS:
            raise ScenarioError("command line", "--backend", f"one of: {', '.join(BACKENDS)}",
                                args.backend)
        if args.jobs < 0:
            raise ScenarioError("command line", "--jobs", "an integer >= 0", args.jobs)
        BACKENDS[args.backend].check()
        sweep = load_sweep(args.sweep)
    except (ScenarioError, BackendUnavailable) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    runs = len(sweep.runs())
    bar = tqdm(total=runs, unit="run", file=sys.stderr, disable=not sys.stderr.isatty())

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    try:
        table = run_sweep(sweep, args.backend, args.jobs, progress)
    finally:
        bar.close()
    print(f"{sweep.name}: {len(sweep.variants)} variants of {sweep.scenario}, "
          f"{len(table.rows)} rows x {len(sweep.seeds)} seeds = {runs} runs ({args.backend})")
    print(format_sweep(table))
    for path, text in ((args.csv, table.csv_text), (args.json, table.json_text)):
        if path:
            Path(path).write_text(text())
            print(f"wrote {path}")
    return 0
