"""Every console page goes through `page()`: session, role, same-origin and CSRF checks first,
then the handler, which runs in a worker thread (database work and form reading are blocking).

Deny by default: a handler is reachable only through `page(permission)`; the sign-in page is
the one `public=True` route. A test walks every route in the router to prove it.
"""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from jinja2 import Environment
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from cme_mailbot.config import Settings
from cme_mailbot.db import session_scope
from cme_mailbot.models import utcnow
from cme_mailbot.pipeline import Pipeline
from cme_mailbot.web import auth
from cme_mailbot.web.models import Role, User, WebSession
from cme_mailbot.web.settings import WebSettings

SESSION_COOKIE = "cme_session"
SIGN_IN_COOKIE = "cme_sign_in"  # double-submit token for the sign-in form (no session yet)
LONDON = ZoneInfo("Europe/London")

# Who may do what: data, not if-chains. Administrators keep the approved list and the users and
# see no child's data; officers work referrals and the quarantine. Both read the approved list
# (an officer checks it before releasing a message) and the audit log.
PERMISSIONS: Mapping[Role, frozenset[str]] = {
    Role.ADMINISTRATOR: frozenset(
        {"dashboard", "contacts.view", "contacts.edit", "users.manage", "audit.view", "account"}
    ),
    Role.OFFICER: frozenset(
        {
            "dashboard",
            "contacts.view",
            "referrals.view",
            "referrals.edit",
            "quarantine.view",
            "quarantine.act",
            "audit.view",
            "account",
        }
    ),
}

# The navigation: label, route name, the permission that shows it.
NAVIGATION: tuple[tuple[str, str, str], ...] = (
    ("Dashboard", "dashboard", "dashboard"),
    ("Referrals", "referrals", "referrals.view"),
    ("Quarantine", "quarantine", "quarantine.view"),
    ("Approved contacts", "contacts", "contacts.view"),
    ("Users", "users", "users.manage"),
    ("Audit log", "audit", "audit.view"),
)


def allowed(user: User | None, permission: str | None) -> bool:
    if permission is None:
        return True
    return user is not None and permission in PERMISSIONS.get(user.role, frozenset())


@dataclass
class Console:
    """What every page needs, built once by `create_app`."""

    settings: Settings
    web: WebSettings
    engine: Engine
    templates: Environment
    pipeline_factory: Callable[[], Pipeline]
    clock: Callable[[], dt.datetime] = utcnow


@dataclass
class Ctx:
    """One request as a handler sees it."""

    request: Request
    console: Console
    user: User | None
    web_session: WebSession | None
    form: FormData | None
    flash: str | None = None
    _extra_headers: dict[str, str] = field(default_factory=dict)

    # ---- input ---------------------------------------------------------------------------

    def path(self, name: str) -> Any:
        return self.request.path_params[name]

    def query(self, name: str, default: str = "") -> str:
        return self.request.query_params.get(name, default).strip()[:200]

    def field(self, name: str) -> str:
        value = self.form.get(name) if self.form is not None else None
        return value if isinstance(value, str) else ""

    def fields(self, name: str) -> list[str]:
        if self.form is None:
            return []
        return [v for v in self.form.getlist(name) if isinstance(v, str)]

    def upload(self, name: str) -> UploadFile | None:
        value = self.form.get(name) if self.form is not None else None
        return value if isinstance(value, UploadFile) else None

    @property
    def actor(self) -> str:
        assert self.user is not None
        return self.user.username

    @property
    def web(self) -> WebSettings:
        return self.console.web

    # ---- the database --------------------------------------------------------------------

    @contextmanager
    def db(self) -> Iterator[Session]:
        with session_scope(self.console.engine) as s:
            yield s

    # ---- output --------------------------------------------------------------------------

    def url(self, name: str, query: Mapping[str, str | int] | None = None, **params: Any) -> str:
        path = str(self.request.app.url_path_for(name, **{k: str(v) for k, v in params.items()}))
        clean = {k: v for k, v in (query or {}).items() if v not in ("", None)}
        return f"{path}?{urlencode(clean)}" if clean else path

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        return render(self, template, status, **context)

    def redirect(
        self,
        name: str,
        *,
        flash: str | None = None,
        query: Mapping[str, str | int] | None = None,
        **params: Any,
    ) -> RedirectResponse:
        if flash and self.web_session is not None:
            with self.db() as s:
                row = s.get(WebSession, self.web_session.id)
                if row is not None:
                    row.flash = flash[:500]
                    s.add(row)
        return RedirectResponse(self.url(name, query, **params), status_code=303)


def render(ctx: Ctx, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    user = ctx.user
    route = ctx.request.scope.get("route")
    current = getattr(route, "name", "")
    nav = [
        {"label": label, "href": ctx.url(name), "current": current.startswith(name)}
        for label, name, perm in NAVIGATION
        if user is not None and allowed(user, perm)
    ]
    base = {
        "user": user,
        "csrf_token": ctx.web_session.csrf_token if ctx.web_session else "",
        "nav": nav,
        "flash": ctx.flash,
        "council": ctx.console.settings.council.name,
        "url": ctx.url,
        "can": lambda perm: allowed(user, perm),
        "errors": [],
    }
    base.update(context)
    html = ctx.console.templates.get_template(template).render(base)
    return HTMLResponse(html, status_code=status)


def error_page(ctx: Ctx, status: int, title: str, message: str) -> HTMLResponse:
    return render(ctx, "error.html", status, title=title, message=message)


def _client_ip(request: Request) -> str:
    return (request.client.host if request.client else "unknown")[:64]


def _same_origin(request: Request) -> bool:
    """A POST from another site is refused even before its CSRF token is looked at."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        # Browsers send Origin with every cross-site POST; an absent one is a same-site form
        # from an older browser or a test client. "null" comes from sandboxed or privacy
        # contexts; the CSRF token still has to match.
        return True
    return origin == f"{request.url.scheme}://{request.url.netloc}"


def tokens_match(a: str, b: str) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())


Handler = Callable[[Ctx], Response]
Endpoint = Callable[[Request], Awaitable[Response]]


def page(permission: str | None, *, public: bool = False) -> Callable[[Handler], Endpoint]:
    """Wrap a handler: signed in (unless `public`), allowed, same-origin, CSRF-checked POSTs."""
    if permission is None and not public:
        raise ValueError("a page needs a permission unless it is public")

    def decorate(handler: Handler) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            console: Console = request.app.state.console
            token = request.cookies.get(SESSION_COOKIE, "")
            loaded = await run_in_threadpool(_load_session, console, token, request.method == "GET")
            web_session, user, flash = loaded if loaded else (None, None, None)
            ctx = Ctx(request, console, user, web_session, None, flash)
            if user is None and not public:
                return _to_sign_in(ctx)
            if not allowed(user, permission):
                return await run_in_threadpool(
                    error_page, ctx, 403, "You cannot see this page",
                    "Your role does not include this page. Ask an administrator if you need it.",
                )  # fmt: skip
            if request.method == "POST":
                if not _same_origin(request):
                    return await run_in_threadpool(
                        error_page, ctx, 403, "Request refused", "The form came from another site."
                    )
                try:
                    ctx.form = await request.form(
                        max_files=1, max_fields=200, max_part_size=console.web.max_upload_bytes
                    )
                except Exception:  # a malformed or oversized body: refuse it, plainly
                    return await run_in_threadpool(
                        error_page, ctx, 400, "Request refused", "The form could not be read."
                    )
                expected = web_session.csrf_token if web_session else ""
                if not public and not tokens_match(ctx.field("csrf_token"), expected):
                    await ctx.form.close()
                    return await run_in_threadpool(
                        error_page, ctx, 403, "The form has expired",
                        "Go back, reload the page and try again.",
                    )  # fmt: skip
            try:
                return await run_in_threadpool(handler, ctx)
            finally:
                if ctx.form is not None:
                    await ctx.form.close()

        endpoint.__name__ = handler.__name__
        endpoint.__doc__ = handler.__doc__
        endpoint.permission = permission  # type: ignore[attr-defined]
        endpoint.public = public  # type: ignore[attr-defined]
        return endpoint

    return decorate


def _load_session(
    console: Console, token: str, pop_flash: bool
) -> tuple[WebSession, User, str | None] | None:
    if not token:
        return None
    with session_scope(console.engine) as s:
        loaded = auth.load_session(s, token, console.web, console.clock())
        if loaded is None:
            return None
        row, user = loaded
        flash = row.flash
        if pop_flash and flash:
            row.flash = None
            s.add(row)
        s.flush()
        s.expunge(row)
        s.expunge(user)
        return row, user, flash


def _to_sign_in(ctx: Ctx) -> RedirectResponse:
    target = ctx.request.url.path if ctx.request.method == "GET" else "/"
    return RedirectResponse(ctx.url("sign_in", {"next": target}), status_code=303)


def secure_cookies(ctx: Ctx) -> bool:
    mode = ctx.web.secure_cookies
    return mode == "always" or (mode == "auto" and ctx.request.url.scheme == "https")


def set_cookie(ctx: Ctx, response: Response, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        httponly=True,
        samesite="strict",
        secure=secure_cookies(ctx),
        path="/",
    )


def london(value: dt.datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(LONDON).strftime("%-d %b %Y %H:%M")


def day(value: dt.date | None) -> str:
    return "" if value is None else value.strftime("%-d %B %Y")
