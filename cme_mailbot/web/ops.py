"""Operational endpoints: `/healthz` for load balancers, `/metrics` for Prometheus.

Neither carries child data. `/healthz` says only ok or unhealthy. `/metrics` (counts only)
answers a request bearing the configured token, or, with no token configured, only direct
requests from this machine (a proxy in front adds forwarding headers, which are refused).
"""

from __future__ import annotations

import hmac
import os

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from cme_mailbot.health import check
from cme_mailbot.metrics import registry_for

_LOOPBACK = {"127.0.0.1", "::1"}
_PROXY_HEADERS = ("x-forwarded-for", "x-real-ip", "forwarded")


async def healthz(request: Request) -> Response:
    console = request.app.state.console

    def run() -> bool:
        with Session(console.engine) as s:
            return check(s, console.settings).healthy

    healthy = await run_in_threadpool(run)
    return PlainTextResponse("ok\n" if healthy else "unhealthy\n", 200 if healthy else 503)


def _metrics_allowed(request: Request, token_env: str | None) -> bool:
    if token_env:
        token = os.environ.get(token_env, "")
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        return bool(token) and hmac.compare_digest(given.encode(), token.encode())
    client = request.client.host if request.client else ""
    return client in _LOOPBACK and not any(h in request.headers for h in _PROXY_HEADERS)


async def metrics(request: Request) -> Response:
    console = request.app.state.console
    if not _metrics_allowed(request, console.web.metrics_token_env):
        return PlainTextResponse("forbidden\n", 403)
    body = await run_in_threadpool(generate_latest, registry_for(console.engine))
    return Response(body, media_type=CONTENT_TYPE_LATEST)


# Public on purpose (see the module docstring); the route walk test names them.
healthz.permission = None  # type: ignore[attr-defined]
metrics.permission = None  # type: ignore[attr-defined]

ROUTES: list[BaseRoute] = [
    Route("/healthz", healthz, methods=["GET"], name="healthz"),
    Route("/metrics", metrics, methods=["GET"], name="metrics"),
]
