# What runs around every HTTP request: the plain functions the app's parts
# (shutdown's request count, a failed service's refusal, a role's paths, CORS,
# the rate-limit headers, metrics, the access log) register here, called by one
# Quart before_request, after_request and teardown_request hook each, with the
# request object itself and the time the request took.
#
# Why one hook and the request as an argument: Quart runs every hook it holds
# through `ensure_async` (an inspection of the function) and a coroutine, and each
# read of `request.X`, `g.X` or `current_app.X` goes through werkzeug's
# LocalProxy, whose class lacks the name: a failed attribute lookup that builds an
# AttributeError, then the context variable. A `POST /api/tasks` went through
# eight Quart hooks and nineteen proxied reads; with this module and `unproxied`
# (the object behind a proxy, for code that reads it more than once) it goes
# through three and none, and the server runs 4,305,507 instructions a request
# instead of 4,439,749 (callgrind, one connection, the server's idle rate taken
# off: the method of benchmarks/instructions.py).
#
# Rules:
# - `watch` functions run first, all of them, for every request, in registration
#   order; they neither answer nor raise. `end` functions run at teardown for the
#   same requests (what a watch counted, an end uncounts), whatever happened.
# - `gate` functions run next, in order: the first that returns a response answers
#   the request (no route runs); one that raises answers with its error's response,
#   as a route's error would.
# - `finish` functions run on every response the app makes for the request (a
#   route's, a gate's, an error handler's), in order, with the seconds since the
#   first watch; they may change the response's headers.
from __future__ import annotations

import time
from typing import Callable, TypeVar

import attrs
from quart import Quart, Request, Response, g, request
from quart.typing import ResponseReturnValue

HOOKS_KEY = "neurogrid.request_hooks"  # app.extensions key
STARTED = "neurogrid_started"  # the attribute of `g` that holds the request's start

Watch = Callable[[Request], None]
Gate = Callable[[Request], "ResponseReturnValue | None"]
Finish = Callable[[Request, Response, float], None]
End = Callable[[], None]
T = TypeVar("T")


def unproxied(proxy: T) -> T:
    """The object a Quart context proxy (`request`, `g`, `current_app`) stands for
    in the current context, to read without the proxy's cost (above)."""
    found: T = proxy._get_current_object()  # type: ignore[attr-defined]
    return found


@attrs.define
class RequestHooks:
    watch: list[Watch] = attrs.Factory(list)
    gate: list[Gate] = attrs.Factory(list)
    finish: list[Finish] = attrs.Factory(list)
    end: list[End] = attrs.Factory(list)


def request_hooks(app: Quart) -> RequestHooks:
    """The hooks of `app` (installed into it on first use)."""
    hooks: RequestHooks | None = app.extensions.get(HOOKS_KEY)
    if hooks is None:
        hooks = app.extensions[HOOKS_KEY] = RequestHooks()
        _install(app, hooks)
    return hooks


def _install(app: Quart, hooks: RequestHooks) -> None:
    @app.before_request
    async def begin() -> ResponseReturnValue | None:
        req: Request = unproxied(request)
        setattr(unproxied(g), STARTED, time.perf_counter())
        for watch in hooks.watch:
            watch(req)
        for gate in hooks.gate:
            answer = gate(req)
            if answer is not None:
                return answer
        return None

    @app.after_request
    async def finish(response: Response) -> Response:
        started: float | None = getattr(unproxied(g), STARTED, None)
        seconds = time.perf_counter() - started if started is not None else 0.0
        req: Request = unproxied(request)
        for finisher in hooks.finish:
            finisher(req, response, seconds)
        return response

    @app.teardown_request
    async def end(exc: BaseException | None) -> None:
        if getattr(unproxied(g), STARTED, None) is not None:
            for ender in hooks.end:
                ender()


__all__ = ["End", "Finish", "Gate", "HOOKS_KEY", "RequestHooks", "Watch", "request_hooks",
           "unproxied"]
