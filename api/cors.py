# CORS: which other origins' browser pages may call the API.
#
# Rules:
# - None by default: only the API's own origin (the dashboard, /docs) - a browser
#   sends no CORS check for those. `neurogrid serve --cors-origin ORIGIN`
#   (repeatable; ApiConfig.cors_origins) allows each ORIGIN, written as the browser
#   sends it (scheme://host[:port], no path); `*` allows any origin (without
#   credentials, per the CORS rules - keys go in the Authorization header, which
#   CORS allows to be sent).
# - A preflight (OPTIONS with Origin and Access-Control-Request-Method) from an
#   allowed origin answers 204 with the methods and headers the API takes; from
#   another origin 403 with the reference's error object. Actual requests from an
#   allowed origin get Access-Control-Allow-Origin (and Vary: Origin) and may read
#   the rate-limit headers.
from __future__ import annotations

import re
from typing import Iterable

from quart import Quart, Request, Response, jsonify

from .request_hooks import request_hooks

ALLOWED_METHODS = "GET, POST, DELETE, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type"
EXPOSED_HEADERS = ("X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, "
                   "Retry-After")
PREFLIGHT_MAX_AGE = "600"
ORIGIN = re.compile(r"^https?://[^/\s]+$")


def parse_origins(origins: Iterable[str]) -> tuple[str, ...]:
    """The allowed origins, checked: `*` or scheme://host[:port]."""
    out = []
    for origin in origins:
        origin = origin.strip().rstrip("/")
        if origin != "*" and not ORIGIN.match(origin):
            raise ValueError(f"--cors-origin {origin!r}: write an origin as a browser sends "
                             "it, scheme://host[:port] (no path), or * for any")
        out.append(origin)
    return tuple(out)


def install_cors(app: Quart, origins: Iterable[str]) -> None:
    allowed = set(parse_origins(origins))
    if not allowed:
        return  # same origin only: nothing to add

    def allows(origin: str | None) -> bool:
        return origin is not None and ("*" in allowed or origin in allowed)

    def allow_origin(origin: str) -> str:
        return "*" if "*" in allowed else origin

    def preflight(req: Request) -> Response | tuple[Response, int] | None:
        if req.method != "OPTIONS":
            return None
        headers = req.headers
        origin = headers.get("Origin")
        if origin is None or "Access-Control-Request-Method" not in headers:
            return None
        if not allows(origin):
            body = {"success": False, "error": "Forbidden",
                    "details": f"the origin {origin[:200]!r} is not allowed "
                               "(neurogrid serve --cors-origin)"}
            return jsonify(body), 403
        return Response(b"", status=204, headers={
            "Access-Control-Allow-Origin": allow_origin(origin),
            "Access-Control-Allow-Methods": ALLOWED_METHODS,
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
            "Vary": "Origin",
        })

    def add_headers(req: Request, response: Response, seconds: float) -> None:
        origin = req.headers.get("Origin")
        if allows(origin) and "Access-Control-Allow-Origin" not in response.headers:
            assert origin is not None
            response.headers["Access-Control-Allow-Origin"] = allow_origin(origin)
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
            response.headers.add("Vary", "Origin")

    hooks = request_hooks(app)
    hooks.gate.append(preflight)
    hooks.finish.append(add_headers)


__all__ = ["install_cors", "parse_origins"]
