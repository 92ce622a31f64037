"""The console as an ASGI app (Starlette): routes, templates, static files, security headers and
error pages. `create_app(settings)` is all a server needs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cme_mailbot.config import Settings
from cme_mailbot.db import session_scope
from cme_mailbot.migrate import prepare_database
from cme_mailbot.models import utcnow
from cme_mailbot.pipeline import Pipeline
from cme_mailbot.web import auth, ops
from cme_mailbot.web import models as _models  # noqa: F401  (registers the console's tables)
from cme_mailbot.web.accounts import dummy_hash
from cme_mailbot.web.page import Console, Ctx, day, error_page, london
from cme_mailbot.web.settings import web_settings
from cme_mailbot.web.views import audit, contacts, dashboard, quarantine, referrals, signin, users

TEMPLATES_DIR = Path(__file__).resolve().parent.parent.parent / "templates" / "web"
STATIC_DIR = Path(__file__).resolve().parent / "static"

CSP = (
    "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'none'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class SecurityHeaders:
    """Headers on every response; pages (everything but /static) are never cached."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")
        https = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", CSP)
                headers.setdefault("X-Frame-Options", "DENY")
                headers.setdefault("Referrer-Policy", "no-referrer")
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
                headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
                headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
                if https:
                    headers.setdefault("Strict-Transport-Security", "max-age=31536000")
                if static:
                    headers.setdefault("Cache-Control", "private, max-age=3600")
                else:
                    headers["Cache-Control"] = "no-store"
                    headers["Pragma"] = "no-cache"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def templates_env() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = london
    env.filters["day"] = day
    return env


def _default_pipeline(settings: Settings, engine: Engine) -> Callable[[], Pipeline]:
    def build() -> Pipeline:
        from cme_mailbot.wiring import open_mailbox, open_transport

        return Pipeline(engine, settings, open_mailbox(settings), open_transport(settings))

    return build


def routes() -> list[BaseRoute]:
    out: list[BaseRoute] = []
    for module in (signin, dashboard, contacts, referrals, quarantine, users, audit, ops):
        out.extend(module.ROUTES)
    out.append(Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"))
    return out


def create_app(
    settings: Settings,
    engine: Engine | None = None,
    *,
    pipeline_factory: Callable[[], Pipeline] | None = None,
    clock: Callable[[], dt.datetime] = utcnow,
) -> Starlette:
    """The console for `settings`; `engine` defaults to the configured database."""
    if engine is None:
        from cme_mailbot.wiring import open_database

        engine = open_database(settings)
    else:
        prepare_database(engine, auto_upgrade=settings.database.auto_upgrade)
    web = web_settings(settings)
    console = Console(
        settings=settings,
        web=web,
        engine=engine,
        templates=templates_env(),
        pipeline_factory=pipeline_factory or _default_pipeline(settings, engine),
        clock=clock,
    )
    with session_scope(engine) as s:
        auth.prune(s, web, clock())
    dummy_hash()  # made now, so the first unknown username costs no more than the next

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        titles = {
            400: (
                "Request refused",
                "Something in the request was not right. Go back and try again.",
            ),
            404: ("Page not found", "Check the address, or go back to the dashboard."),
            405: ("Request refused", "That page does not take this kind of request."),
            413: ("Too large", "The upload is larger than the console accepts."),
        }
        title, message = titles.get(
            status,
            ("Sorry, there is a problem", "Try again later. If it keeps happening, tell IT."),
        )
        # A minimal context: no session lookup, so an error page never reveals who is signed in.
        ctx = Ctx(request, console, None, None, None)
        return await run_in_threadpool(error_page, ctx, status, title, message)

    exception_handlers: dict[Any, Any] = {HTTPException: http_error, 500: http_error}
    app = Starlette(
        routes=routes(),
        exception_handlers=exception_handlers,
        max_body_size=web.max_upload_bytes + 64 * 1024,
    )
    app.state.console = console
    app.add_middleware(SecurityHeaders)
    return app
