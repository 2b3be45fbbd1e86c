# `neurogrid serve --role`: what one process of a deployment does.
#
#   all          the whole service in one process (the default, and the only role
#                on SQLite): REST API, scheduler, worker endpoint (app.serve_services)
#   api          stateless HTTP over a PostgreSQL database: validation, keys, shared
#                limits, submissions written for the coordinator, reads and streams
#                from the database; workers that connect are sent to the leader
#   coordinator  the scheduler and the worker websockets; several may run, one
#                leads (an advisory lock), the others stand by and take over
#
# Rules:
# - The roles are a registry (ROLE_SERVICES: name -> the services its app runs);
#   the api and coordinator roles' services (cluster_services.py) are imported
#   only when asked for, so SQLite needs no PostgreSQL driver.
# - A role other than `all` needs a PostgreSQL database: `check_role` says so
#   before anything starts, naming the flag.
# - A coordinator process answers only what a coordinator serves: the worker
#   endpoint, /health and /metrics; any other path is a 404 that names the role,
#   so a client pointed at it by mistake learns where to go.
from __future__ import annotations

from typing import Callable

from quart import Request
from quart_trio import QuartTrio

from engine.protocol import WORKER_PATH

from .app import ServeServices, create_app, serve_services
from .errors import ApiError
from .request_hooks import request_hooks
from .services import ROLES, ApiConfig
from .store import split_url


def api_services() -> ServeServices:
    from .cluster_services import serve_api_services
    return serve_api_services


def coordinator_services() -> ServeServices:
    from .cluster_services import serve_coordinator_services
    return serve_coordinator_services


ROLE_SERVICES: dict[str, Callable[[], ServeServices]] = {
    "all": lambda: serve_services, "api": api_services, "coordinator": coordinator_services,
}
assert set(ROLE_SERVICES) == set(ROLES)
COORDINATOR_PATHS = frozenset({WORKER_PATH, "/health", "/metrics"})
SHARED_SCHEMES = ("postgresql", "postgres")


def check_role(role: str, db_url: str) -> None:
    """ValueError when `role` cannot run on the database at `db_url`."""
    if role not in ROLE_SERVICES:
        raise ValueError(f"--role {role!r}: one of {', '.join(ROLE_SERVICES)}")
    if role != "all" and split_url(db_url)[0] not in SHARED_SCHEMES:
        raise ValueError(f"--role {role} shares its database with other processes: give "
                         "--db postgresql://USER@HOST/DB (SQLite serves one process: "
                         "--role all)")


def create_role_app(config: ApiConfig) -> QuartTrio:
    """The app of `config.role`."""
    check_role(config.role, config.db)
    app = create_app(config, ROLE_SERVICES[config.role]())
    if config.role == "coordinator":
        def coordinator_paths(req: Request) -> None:
            if req.path not in COORDINATOR_PATHS:
                raise ApiError(404, "Not found",
                               f"this is a coordinator process: it serves workers at "
                               f"{WORKER_PATH}, /health and /metrics; the REST API is "
                               "served by the API processes")

        request_hooks(app).gate.append(coordinator_paths)
    return app


__all__ = ["COORDINATOR_PATHS", "ROLE_SERVICES", "check_role", "create_role_app"]
