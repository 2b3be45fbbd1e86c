# `neurogrid serve` (same as `python -m api`): the coordinator, the REST API and the
# worker websocket endpoint in one process, served by hypercorn's trio worker, plus
# `--local-workers N` worker subprocesses. A local worker serves, by default, what
# `neurogrid worker` serves with no model named: for each catalog model the best
# pack built from installed weights (SmolLM2 for llama2:7b, Whisper base for
# whisper, the random-weight image pack for stable-diffusion), each announced as
# the stand-in it is; `--local-models demo` serves only the tiny demo text pack
# (quick starts, tests), `noop` the no-op runner (network benchmarks).
#
# Rules:
# - Defaults: 127.0.0.1:8080, ./neurogrid.db, one local worker, open auth. Port 0
#   picks a free port; the line "NeuroGrid API on http://HOST:PORT" on stdout says
#   which (tests and scripts read it; a coordinator process says "NeuroGrid
#   coordinator on ...").
# - `--role all|api|coordinator` (roles.py): all, the default, is everything
#   above in one process; api and coordinator are the processes of a deployment on
#   PostgreSQL (a SQLite --db is refused for them, in one line, exit 2) and start
#   no local workers. A coordinator advertises ws://HOST:PORT/api/nodes/connect of
#   the address it listens on, or `--advertise-url`.
# - Each local worker gets its own worker token (`local-1`, `local-2`, ...),
#   replaced at every start; the token reaches the worker in its environment
#   (NEUROGRID_TOKEN), never on a command line that `ps` shows. It logs to the
#   server's stderr in the server's --log-format (engine/logs.py: one JSON layout).
# - `--journal PATH` appends the coordinator's journal (engine.core.journal format)
#   to PATH; a path that cannot be opened stops `serve` before anything starts.
# - Exit status: 0 after Ctrl-C or SIGTERM; 1 when the database does not open (one
#   line on stderr naming the file and what to do) or when the services fail while
#   serving (the store cannot continue): never a process that answers but cannot
#   work, so a supervisor restarts it.
# - Ctrl-C or SIGTERM stops gracefully and promptly (api/shutdown.py): local workers
#   get SIGTERM first (they finish their running tasks and leave; SIGKILL if they
#   have not after a few seconds), remote workers' connections are closed, requests
#   in flight are waited for; then hypercorn stops accepting, the lifespan shuts the
#   coordinator down and the store commits what is queued.
from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import signal
import sys
import time

from typing import Awaitable, Callable

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from engine.protocol import MAX_FRAME_BYTES, WORKER_PATH
from engine.runtime import CoordinatorConfig

from .access import parse_networks
from .app import ApiConfig
from .cors import parse_origins
from .database import DB_ENV, DEFAULT_DB, choose_database
from .logs import LOG_FORMATS, configure_logging
from .roles import check_role, create_role_app
from .keepalive import serve_idle_timers
from .server import BODY_TIMEOUT_SECONDS, KEEP_ALIVE_SECONDS, hypercorn_config
from .services import ROLES, service_failure
from .shutdown import app_closing
from .store import StoreError, open_store

WORKER_STOP_SECONDS = 5.0
SERVER_GRACE_SECONDS = 1.0
log = logging.getLogger("neurogrid")


def positive_seconds(text: str) -> float:
    """A duration flag: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neurogrid serve",
                                     description="Run the NeuroGrid coordinator and REST API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0: any free port")
    parser.add_argument("--db", default=None,
                        help=f"the database: a SQLite file path or a store URL (sqlite:///PATH, "
                             f"postgresql://USER@HOST/DB); default: ${DB_ENV}, else ./{DEFAULT_DB}")
    parser.add_argument("--role", choices=ROLES, default="all",
                        help="all: the whole service in this process (the default); api: "
                             "the REST API only; coordinator: the scheduler and the worker "
                             "endpoint, leader or standby (api and coordinator share a "
                             "postgresql:// --db)")
    parser.add_argument("--advertise-url", default="", metavar="URL",
                        help="coordinator role: the worker URL (ws://HOST:PORT"
                             f"{WORKER_PATH}) other processes name to workers while this "
                             "one leads; default: the address it listens on")
    parser.add_argument("--local-workers", type=int, default=None, metavar="N",
                        help="local worker processes to start (0: none; default 1 with "
                             "--role all, else 0)")
    parser.add_argument("--local-models", choices=LOCAL_MODELS, default="installed",
                        help="what local workers serve: installed (a pack per model, built "
                             "once from installed weights), demo (the tiny demo text pack) "
                             "or noop (no inference)")
    parser.add_argument("--auth", choices=("open", "required"), default="open",
                        help="open: keys optional (anonymous = beta tier per address); "
                             "required: a Bearer key on every task call")
    parser.add_argument("--environment", default="development",
                        help="reported by /health")
    parser.add_argument("--keep-alive", type=positive_seconds, default=KEEP_ALIVE_SECONDS,
                        metavar="SECONDS",
                        help="close an idle keep-alive HTTP connection after this long "
                             f"(default {KEEP_ALIVE_SECONDS:g})")
    parser.add_argument("--body-timeout", type=positive_seconds, default=BODY_TIMEOUT_SECONDS,
                        metavar="SECONDS",
                        help="answer 408 when a request's body has not arrived this long "
                             f"after its headers (default {BODY_TIMEOUT_SECONDS:g})")
    parser.add_argument("--trusted-proxy", action="append", default=[], metavar="ADDR",
                        help="a reverse proxy (address or network; repeatable) whose "
                             "X-Forwarded-For names the client; from other peers the "
                             "header is ignored")
    parser.add_argument("--access-log", action="store_true", help="log every request (one line)")
    parser.add_argument("--log-format", choices=sorted(LOG_FORMATS), default="text",
                        help="text: human-readable lines; json: one JSON object a line "
                             "(for log pipelines)")
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="let pages from ORIGIN (scheme://host[:port], or * for any) "
                             "call the API from a browser; repeatable (default: none "
                             "beyond the API's own origin)")
    parser.add_argument("--journal", metavar="PATH",
                        help="append the scheduler's journal (every event and decision) "
                             "to PATH, for `python -m sim --replay PATH`; a PATH ending "
                             "in .gz is written gzip-compressed")
    parser.add_argument("--trusted-node", action="append", default=[], metavar="NAME",
                        help="a worker token name (or node id) whose node the operator "
                             "trusts to verify other nodes' results (repeatable); other "
                             "nodes earn it by reputation (docs/DESIGN.md, Verification)")
    return parser


def api_config(args: argparse.Namespace) -> ApiConfig:
    """The app's configuration from the command line."""
    return ApiConfig(db=choose_database(args.db).url, auth_required=args.auth == "required",
                     environment=args.environment, cors_origins=parse_origins(args.cors_origin),
                     trusted_proxies=args.trusted_proxy,
                     coordinator=CoordinatorConfig(journal_path=args.journal,
                                                   trusted_nodes=tuple(args.trusted_node)),
                     role=args.role, advertise_url=args.advertise_url,
                     body_timeout=args.body_timeout)


def server_config(args: argparse.Namespace) -> HypercornConfig:
    config = hypercorn_config(args.host, args.port, False, keep_alive_seconds=args.keep_alive,
                              websocket_max_message_size=4 * MAX_FRAME_BYTES)  # the codec judges
    # hypercorn's access log stays off: it writes some requests twice (api/logs.py);
    # the app logs each once (neurogrid.access, enabled by --access-log).
    config.accesslog = None
    # The app drains before hypercorn is told to stop (shutdown.py): what is left
    # then is streams (cut; their clients reconnect) and requests that came in the
    # last instant.
    config.graceful_timeout = SERVER_GRACE_SECONDS
    return config


async def local_worker_tokens(db: str, count: int) -> list[str]:
    async with open_store(db) as store:
        return [await store.create_node_token(f"local-{i}", time.time())
                for i in range(1, count + 1)]


LOCAL_MODELS = {"installed": (), "demo": ("--demo",), "noop": ("--noop",)}
# the first line a started server prints: "NeuroGrid API on http://HOST:PORT"
ROLE_TITLES = {"all": "API", "api": "API", "coordinator": "coordinator"}


def worker_command(url: str, name: str, models: str = "installed",
                   log_format: str = "text") -> list[str]:
    """A local worker's command line: it logs in the server's --log-format."""
    return [sys.executable, "-m", "engine.worker", "--coordinator", url, "--name", name,
            "--location", "local", "--log-format", log_format, *LOCAL_MODELS[models]]


async def run_local_worker(command: list[str], token: str) -> None:
    async def stop(process: trio.Process) -> None:
        process.terminate()
        with trio.move_on_after(WORKER_STOP_SECONDS):
            await process.wait()
            return
        process.kill()

    await trio.run_process(command, check=False, deliver_cancel=stop,
                           env={**os.environ, "NEUROGRID_TOKEN": token})


async def shutdown_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return


async def first_of(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return when the first of `waits` has."""
    async with trio.open_nursery() as nursery:
        async def run(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        for wait in waits:
            nursery.start_soon(run, wait)


async def serve_all(args: argparse.Namespace) -> str | None:
    """Serve until a signal (None) or until the services fail (their reason)."""
    tokens = await local_worker_tokens(args.db, args.local_workers)
    app = create_role_app(api_config(args))
    closing, failure = app_closing(app), service_failure(app)
    config = server_config(args)
    async with trio.open_nursery() as nursery:
        workers = trio.CancelScope()
        workers_done = trio.Event()

        async def run_workers(ws_url: str) -> None:
            try:
                with workers:
                    async with trio.open_nursery() as local:
                        for index, token in enumerate(tokens, start=1):
                            command = worker_command(ws_url, f"local-{index}",
                                                     args.local_models, args.log_format)
                            local.start_soon(run_local_worker, command, token)
            finally:
                workers_done.set()

        async def drain_when_told() -> None:
            """The shutdown trigger - a signal, or the services failing (the store
            cannot continue) - drains (shutdown.py), then lets hypercorn stop."""
            await first_of(shutdown_signal, failure.failed.wait)
            started = time.monotonic()
            log.info("shutting down: stopping local workers, closing worker connections")
            workers.cancel()  # local workers get SIGTERM: they finish their tasks, leave
            await workers_done.wait()
            await closing.begin()
            log.info("shutting down: drained in %.2f s", time.monotonic() - started)

        async def run_server(task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await serve(app, config, shutdown_trigger=drain_when_told,
                            task_status=task_status)
            finally:  # local workers end when the server has
                nursery.cancel_scope.cancel()

        await nursery.start(serve_idle_timers)  # keep-alive timing, one task (keepalive.py)
        url = (await nursery.start(run_server))[0]
        tune_garbage_collector()
        note = getattr(args, "database_note", "")  # once the database has opened
        if note:
            log.info(note)
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
        ws_url = f"ws://{host}:{url.rsplit(':', 1)[1]}{WORKER_PATH}"
        app.extensions["neurogrid"].listening_at(ws_url)  # what a leader advertises
        print(f"NeuroGrid {ROLE_TITLES[args.role]} on {url}", flush=True)
        nursery.start_soon(run_workers, ws_url)
    print("NeuroGrid API stopped", flush=True)
    return failure.reason


def tune_garbage_collector() -> None:
    """A long-lived server keeps many live objects (queued tasks, sessions): move
    everything alive after start-up out of the collector's sight and collect the
    young generation less often, so full collections - pauses that grow with the
    heap and show up as tail latency - are rarer."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.local_workers is None:
        args.local_workers = 1 if args.role == "all" else 0
    if args.local_workers < 0:
        print("neurogrid serve: --local-workers must be 0 or more", file=sys.stderr)
        return 2
    if args.local_workers and args.role != "all":
        print(f"neurogrid serve: --local-workers: a {args.role} process starts no workers "
              "(run `neurogrid worker --coordinator URL ...` beside the coordinators)",
              file=sys.stderr)
        return 2
    try:
        check_role(args.role, choose_database(args.db).url)
    except ValueError as e:
        print(f"neurogrid serve: {e}", file=sys.stderr)
        return 2
    try:
        parse_origins(args.cors_origin)
        parse_networks(args.trusted_proxy)
    except ValueError as e:
        print(f"neurogrid serve: {e}", file=sys.stderr)
        return 2
    if args.journal is not None:  # fail here, in one line, not in the app's lifespan
        try:
            open(args.journal, "a", encoding="utf-8").close()
        except OSError as e:
            print(f"neurogrid serve: cannot open the journal file {args.journal!r}: "
                  f"{e.strerror or e}", file=sys.stderr)
            return 2
    configure_logging(args.log_format, access=args.access_log)
    database = choose_database(args.db)
    args.db = database.url
    created = "" if database.exists() else ": new, created now"
    args.database_note = f"database {database.describe()}{created}"
    try:
        failed = trio.run(serve_all, args)
    except StoreError as exc:  # the database does not open: one line, not a traceback
        print(f"neurogrid serve: {exc}", file=sys.stderr)
        return 1
    if failed is not None:  # a supervisor restarts it
        print(f"neurogrid serve: stopped because the service failed: {failed}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
