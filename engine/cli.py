# The `neurogrid` command: one entry point that hands each subcommand to the
# module that owns it, so `neurogrid serve` is exactly `python -m api`,
# `neurogrid worker` is `python -m engine.worker`, `neurogrid sim` is `python -m sim`.
# Imports are lazy: `neurogrid worker` never loads Quart, `neurogrid sim` never
# loads ONNX Runtime.
from __future__ import annotations

import importlib
import sys
from typing import Callable

# subcommand -> (module with a `main(argv) -> int`, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("api.__main__", "run the coordinator and the REST API (python -m api)"),
    "worker": ("engine.worker.__main__", "run a node operator's worker (python -m engine.worker)"),
    "keys": ("api.admin", "manage API keys: neurogrid keys create --tier beta|premium"),
    "nodes": ("api.admin", "manage worker tokens: neurogrid nodes create --name NAME"),
    "sim": ("sim.cli", "run a simulation scenario (python -m sim)"),
}


def usage() -> str:
    lines = ["usage: neurogrid COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"neurogrid: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    entry: Callable[[list[str]], int] = module.main
    if module.__name__ == "api.admin":
        return entry([name, *rest])
    return entry(rest)


if __name__ == "__main__":
    sys.exit(main())
