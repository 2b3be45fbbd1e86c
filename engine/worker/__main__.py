# `neurogrid worker` (same as `python -m engine.worker`): a node operator's worker.
#
#   neurogrid worker --coordinator ws://HOST:PORT/api/nodes/connect --token T
#
# `--coordinator` may be repeated (a deployment's coordinators: one leads, the
# others stand by): the worker connects down the list and follows a standby's
# "not the leader" error to the leader it names (agent.CoordinatorList).
#
# With no --model, --demo or --noop it serves, for each model of the catalog, the
# best pack this machine can build from installed weights (packs/defaults.py:
# SmolLM2 for llama2:7b, Whisper base for whisper, the random-weight image pack
# for stable-diffusion), each announced with the weights it really is.
#
# Rules: every failure the operator can cause (a bad flag, a model that will not
# load, a refused token, a coordinator that stays unreachable with --max-retries)
# ends with exactly one line on stderr saying what and why, and exit status 1
# (2 for usage errors). The first Ctrl-C / SIGTERM drains (finish or hand back the
# running tasks within --drain-grace); a second one stops at once.
#
# Logs go to stderr, `--log-format text` (the default) or `json`: engine/logs.py's
# JSON lines, the same keys as `neurogrid serve --log-format json` (whose local
# workers get the server's format); with json the failure line is a JSON line too.
#
# `main(argv, parser=..., variant=...)` runs a variant of this worker on the same
# flags and start-up (the adversary suite, benchmarks/adversaries.py: lying workers
# for the trust tests). A variant may change what is served before the models load
# and wrap the executor and the configuration after; the worker itself never has one.
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Callable, NoReturn, Protocol

import trio

from engine.core import GPU_CLASSES, gpu_class_name
from engine.logs import LOG_FORMATS, install_log_handler
from engine.worker.agent import (
    CoordinatorList, CoordinatorUnreachable, Executor, Worker, WorkerConfig, WorkerRefused,
)
from engine.worker.node import (
    DEMO_MODEL, Hardware, ModelSource, ThreadedExecutor, detect_gpu, host_memory_gb, load_models,
    served_weights, usable_gpu,
)
from engine.worker.packs.defaults import available_defaults
from engine.worker.runners.base import ModelLoadError

log = logging.getLogger("engine.worker")
PROG = "neurogrid worker"
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"  # --log-format text


def print_line(text: str) -> None:
    print(text, file=sys.stderr)


# how the one line a failure ends with is written, by --log-format: as it is, or
# as a JSON log line (level error) like every other line of a json log
FAILURE_LINE: dict[str, Callable[[str], None]] = {"text": print_line, "json": log.error}


def _model_spec(text: str) -> ModelSource:
    name, sep, directory = text.partition("=")
    if not sep or not name or not directory:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {text!r}")
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"model directory {directory!r} does not exist")
    return ModelSource(name, "dir", path)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


class WorkerVariant(Protocol):
    """A variant of the worker on the same command line (see the top comment)."""

    def sources(self, args: argparse.Namespace,
                sources: list[ModelSource]) -> list[ModelSource]:
        """What to serve instead of `sources` (what the flags chose)."""
        ...

    def adapt(self, args: argparse.Namespace, config: WorkerConfig,
              executor: ThreadedExecutor) -> tuple[WorkerConfig, Executor]:
        """The configuration and executor the worker runs with."""
        ...


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not the whole usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog, description="Run a NeuroGrid worker: connect to a coordinator and run "
        "the tasks it assigns on this machine's models.")
    p.add_argument("--coordinator", action="append", default=[], metavar="URL",
                   help="ws://HOST:PORT/api/nodes/connect; repeatable: a deployment's "
                   "coordinators, of which the worker finds the leader (default: "
                   "$NEUROGRID_COORDINATOR, URLs separated by commas)")
    p.add_argument("--token", default=os.environ.get("NEUROGRID_TOKEN"),
                   help="this node's worker token, from `neurogrid nodes create` "
                   "(default: $NEUROGRID_TOKEN, which keeps it out of `ps`)")
    p.add_argument("--name", default=socket.gethostname(), help="node name (default: hostname)")
    p.add_argument("--location", default="", help='where the node is, e.g. "Germany"')
    p.add_argument("--region", default="", help="region code, e.g. eu-central")
    p.add_argument("--gpu", help="GPU name to announce (default: detected with nvidia-smi, "
                   "else cpu)")
    p.add_argument("--vram-gb", type=_non_negative, help="model memory to announce, GB")
    p.add_argument("--slots", type=_positive_int, default=1, help="tasks run at once (1)")
    p.add_argument("--price-per-hour", type=_non_negative, metavar="DOLLARS",
                   help="price of this node per hour (default: its GPU class's price)")
    p.add_argument("--model", type=_model_spec, action="append", default=[],
                   metavar="NAME=DIR", help="serve model NAME from an exported model "
                   "directory (repeatable)")
    p.add_argument("--demo", action="store_true", help=f"serve {DEMO_MODEL} with the "
                   "locally built demo model (its text is NOT meaningful)")
    p.add_argument("--demo-dir", type=Path, help="where to build the demo pack "
                   "(default: ~/.cache/neurogrid/demo-pack)")
    p.add_argument("--noop", action="store_true", help=f"serve {DEMO_MODEL} with the no-op "
                   "runner (no inference; for benchmarks)")
    p.add_argument("--provider", choices=("auto", "cpu", "cuda"), help="onnxruntime "
                   "execution provider (default: $NEUROGRID_ORT_PROVIDER, else auto)")
    p.add_argument("--drain-grace", type=_non_negative, default=30.0, metavar="SECONDS",
                   help="on Ctrl-C, how long running tasks may finish (30)")
    p.add_argument("--max-retries", type=int, metavar="N", help="give up after N failed "
                   "connection attempts in a row (default: retry forever)")
    p.add_argument("--log-level", default="INFO",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument("--log-format", choices=sorted(LOG_FORMATS), default="text",
                   help="text: human-readable lines; json: one JSON object a line, the "
                        "same keys as `neurogrid serve --log-format json` (engine/logs.py)")
    return p


def _check(p: argparse.ArgumentParser, args: argparse.Namespace) -> list[ModelSource]:
    if not args.coordinator:
        args.coordinator = [u.strip() for u in os.environ.get("NEUROGRID_COORDINATOR", "")
                            .split(",") if u.strip()]
    if not args.coordinator:
        p.error("--coordinator URL is required (or set NEUROGRID_COORDINATOR)")
    for url in args.coordinator:
        if not url.startswith(("ws://", "wss://")):
            p.error(f"--coordinator must be a ws:// or wss:// URL, got {url!r}")
    if not args.token:
        p.error("--token is required (or set NEUROGRID_TOKEN)")
    if args.demo and args.noop:
        p.error("--demo and --noop both serve llama2:7b; pick one")
    sources = list(args.model)
    if args.demo:
        sources.append(ModelSource(DEMO_MODEL, "demo"))
    if args.noop:
        sources.append(ModelSource(DEMO_MODEL, "noop"))
    if not sources:  # what this machine has: a pack per catalog model (packs/defaults.py)
        entries, skipped = available_defaults()
        for reason in skipped:
            log.warning("not serving %s", reason)
        sources = [ModelSource.default_pack(entry) for entry in entries]
    if not sources:
        p.error("nothing to serve: give --model NAME=DIR, --demo or --noop")
    names = [s.name for s in sources]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        p.error(f"model(s) given twice: {', '.join(duplicates)}")
    return sources


def _hardware(args: argparse.Namespace, sources: list[ModelSource]) -> Hardware:
    onnx = any(s.kind != "noop" for s in sources)
    if args.gpu:  # the catalog's memory for a known class, e.g. --gpu "RTX 4090"
        known = GPU_CLASSES.get(gpu_class_name(args.gpu))
        detected = Hardware(args.gpu, known.vram_gb if known else host_memory_gb())
    elif onnx and args.provider == "cpu":  # models will run on the CPU, whatever is here
        detected = Hardware("cpu", host_memory_gb())
    else:
        detected = usable_gpu(detect_gpu(), onnx)
    vram = args.vram_gb if args.vram_gb is not None else detected.vram_gb
    return Hardware(detected.gpu, vram)


async def _serve(worker: Worker) -> BaseException | None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_on_signals, signals, worker)
            try:
                await worker.run()
            except (WorkerRefused, CoordinatorUnreachable) as exc:
                return exc
            finally:
                nursery.cancel_scope.cancel()
    return None


async def _on_signals(signals: AsyncIterator[int], worker: Worker) -> None:
    count = 0
    async for signum in signals:
        count += 1
        name = signal.Signals(signum).name
        if count == 1:
            log.warning("%s: draining - finishing running tasks (up to %.0f s); "
                        "press Ctrl-C again to stop now", name, worker.config.drain_grace)
            worker.drain()
        else:
            log.warning("%s again: stopping now; running tasks go back to the coordinator",
                        name)
            worker.stop()


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None,
         variant: WorkerVariant | None = None) -> int:
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    install_log_handler(args.log_format, args.log_level, TEXT_FORMAT)
    say = FAILURE_LINE[args.log_format]
    sources = _check(parser, args)
    if variant is not None:
        sources = variant.sources(args, sources)
    hardware = _hardware(args, sources)
    try:
        runners = load_models(sources, args.demo_dir, args.provider)
    except (ModelLoadError, OSError) as exc:
        say(f"{PROG}: cannot load models: {exc}")
        return 1
    config = WorkerConfig(
        token=args.token, name=args.name, gpu=hardware.gpu, vram_gb=hardware.vram_gb,
        slots=args.slots, location=args.location, region=args.region,
        price_per_hour=args.price_per_hour, drain_grace=args.drain_grace,
        max_retries=args.max_retries, weights=served_weights(sources),
    )
    threaded = ThreadedExecutor(runners, max_threads=args.slots + 2)
    executor: Executor = threaded
    if variant is not None:
        config, executor = variant.adapt(args, config, threaded)
    log.info("worker %r: %s, %.1f GB, %d slot(s), coordinator %s", args.name, config.gpu,
             config.vram_gb, args.slots, ", ".join(args.coordinator))
    worker = Worker(config, executor, CoordinatorList(args.coordinator))
    error = trio.run(_serve, worker)
    if isinstance(error, WorkerRefused):
        say(f"{PROG}: the coordinator refused this worker: {error}")
        return 1
    if isinstance(error, CoordinatorUnreachable):
        say(f"{PROG}: cannot reach the coordinator at {', '.join(args.coordinator)}: {error}")
        return 1
    log.info("worker stopped (%d task(s) completed)", worker.completed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
