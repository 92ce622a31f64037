"""Sign in, sign out, and a user's own password."""

from __future__ import annotations

import secrets

from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from cme_mailbot.web import accounts, auth
from cme_mailbot.web.page import (
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    Ctx,
    _client_ip,
    page,
    set_cookie,
    tokens_match,
)


def _safe_next(target: str) -> str:
    """Only a path on this site: never `//host` or a full URL (no open redirect)."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target[:200]
    return "/"


def _form(ctx: Ctx, status: int = 200, errors: list[dict[str, str]] | None = None) -> Response:
    token = secrets.token_urlsafe(32)
    response = ctx.render(
        "sign_in.html",
        status,
        sign_in_token=token,
        next=_safe_next(ctx.query("next") or ctx.field("next")),
        username=ctx.field("username"),
        errors=errors or [],
    )
    set_cookie(ctx, response, SIGN_IN_COOKIE, token)
    return response


@page(None, public=True)
def sign_in(ctx: Ctx) -> Response:
    """The sign-in form; a signed-in user goes straight to the dashboard."""
    if ctx.user is not None:
        return RedirectResponse(ctx.url("dashboard"), status_code=303)
    return _form(ctx)


@page(None, public=True)
def sign_in_post(ctx: Ctx) -> Response:
    if not tokens_match(ctx.field("sign_in_token"), ctx.request.cookies.get(SIGN_IN_COOKIE, "")):
        return _form(
            ctx,
            403,
            [{"text": "The sign-in form expired or your browser blocked its cookie. Try again.",
              "href": "#username"}],
        )  # fmt: skip
    username, password = ctx.field("username"), ctx.field("password")
    errors = []
    if not username.strip():
        errors.append({"text": "Enter your username", "href": "#username"})
    if not password:
        errors.append({"text": "Enter your password", "href": "#password"})
    if errors:
        return _form(ctx, 400, errors)
    with ctx.db() as s:
        result = auth.sign_in(
            s, username, password, _client_ip(ctx.request), ctx.web, ctx.console.clock()
        )
    if result.token is None:
        return _form(ctx, 400, [{"text": result.error or auth.SIGN_IN_FAILED, "href": "#username"}])
    response = RedirectResponse(_safe_next(ctx.field("next")), status_code=303)
    set_cookie(ctx, response, SESSION_COOKIE, result.token)
    response.delete_cookie(SIGN_IN_COOKIE, path="/")
    return response


@page("account")
def sign_out(ctx: Ctx) -> Response:
    with ctx.db() as s:
        auth.end_session(s, ctx.request.cookies.get(SESSION_COOKIE, ""))
    response = RedirectResponse(ctx.url("sign_in"), status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@page("account")
def password_form(ctx: Ctx) -> Response:
    return ctx.render("password.html", title="Change your password")


@page("account")
def password_post(ctx: Ctx) -> Response:
    current, new, confirm = ctx.field("current"), ctx.field("new"), ctx.field("confirm")
    errors: list[dict[str, str]] = []
    with ctx.db() as s:
        user = accounts.get_user(s, ctx.actor)
        if not accounts.verify_password(user, current):
            errors.append({"text": "Your current password is not right", "href": "#current"})
        elif new != confirm:
            errors.append({"text": "The new passwords do not match", "href": "#confirm"})
        else:
            try:
                accounts.check_password(new, user.username, ctx.web.min_password_length)
            except accounts.AccountError as exc:
                errors.append({"text": str(exc).capitalize(), "href": "#new"})
        if not errors:
            accounts.set_password(
                s, user.username, new, actor=user.username, min_length=ctx.web.min_password_length
            )
            # set_password signs out every session, this one too: open a fresh one.
            token = auth.open_session(
                s, user, _client_ip(ctx.request), ctx.web, ctx.console.clock()
            )
    if errors:
        return ctx.render("password.html", 400, title="Change your password", errors=errors)
    response = RedirectResponse(ctx.url("dashboard"), status_code=303)
    set_cookie(ctx, response, SESSION_COOKIE, token)
    return response


ROUTES = [
    Route("/sign-in", sign_in, methods=["GET"], name="sign_in"),
    Route("/sign-in", sign_in_post, methods=["POST"], name="sign_in_post"),
    Route("/sign-out", sign_out, methods=["POST"], name="sign_out"),
    Route("/account/password", password_form, methods=["GET"], name="password"),
    Route("/account/password", password_post, methods=["POST"], name="password_post"),
]
