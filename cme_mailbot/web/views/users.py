"""Console users, for administrators: add, reset a password (which also unlocks), disable or
enable, remove. An administrator cannot disable or remove their own account."""

from __future__ import annotations

import datetime as dt

from sqlmodel import Session
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Route

from cme_mailbot.web import accounts
from cme_mailbot.web.models import Role, User
from cme_mailbot.web.page import Ctx, page

Errors = list[dict[str, str]]


def _user(s: Session, user_id: int) -> User:
    user = s.get(User, user_id)
    if user is None:
        raise HTTPException(404)
    return user


def _locked(user: User, now: dt.datetime) -> bool:
    return user.locked_until is not None and user.locked_until > now


@page("users.manage")
def users_list(ctx: Ctx) -> Response:
    with ctx.db() as s:
        users = accounts.list_users(s)
    now = ctx.console.clock()
    return ctx.render(
        "users/list.html",
        title="Users",
        users=[(u, _locked(u, now)) for u in users],
    )


def _new_form(ctx: Ctx, status: int = 200, errors: Errors | None = None) -> Response:
    return ctx.render(
        "users/new.html",
        status,
        title="Add a user",
        roles=[r.value for r in Role],
        values={"username": ctx.field("username"), "role": ctx.field("role")},
        errors=errors or [],
    )


@page("users.manage")
def users_new(ctx: Ctx) -> Response:
    return _new_form(ctx)


def _password_errors(ctx: Ctx, username: str) -> Errors:
    password, confirm = ctx.field("password"), ctx.field("confirm")
    if password != confirm:
        return [{"text": "The passwords do not match", "href": "#confirm"}]
    try:
        accounts.check_password(password, username, ctx.web.min_password_length)
    except accounts.AccountError as exc:
        return [{"text": str(exc).capitalize(), "href": "#password"}]
    return []


@page("users.manage")
def users_new_post(ctx: Ctx) -> Response:
    errors: Errors = []
    try:
        username = accounts.normalise_username(ctx.field("username"))
    except accounts.AccountError as exc:
        username = ""
        errors.append({"text": str(exc).capitalize(), "href": "#username"})
    if ctx.field("role") not in {r.value for r in Role}:
        errors.append({"text": "Choose a role", "href": "#role-administrator"})
    errors += _password_errors(ctx, username or "-")
    if errors:
        return _new_form(ctx, 400, errors)
    try:
        with ctx.db() as s:
            accounts.add_user(
                s,
                username,
                ctx.field("role"),
                ctx.field("password"),
                actor=ctx.actor,
                min_length=ctx.web.min_password_length,
            )
    except accounts.AccountError as exc:
        return _new_form(ctx, 400, [{"text": str(exc).capitalize(), "href": "#username"}])
    return ctx.redirect("users", flash=f"User {username} added.")


def _show(ctx: Ctx, status: int = 200, errors: Errors | None = None) -> Response:
    with ctx.db() as s:
        user = _user(s, ctx.path("user_id"))
    return ctx.render(
        "users/show.html",
        status,
        title=f"User {user.username}",
        account=user,
        locked=_locked(user, ctx.console.clock()),
        is_self=user.username == ctx.actor,
        errors=errors or [],
    )


@page("users.manage")
def users_show(ctx: Ctx) -> Response:
    return _show(ctx)


@page("users.manage")
def users_password(ctx: Ctx) -> Response:
    with ctx.db() as s:
        username = _user(s, ctx.path("user_id")).username
    errors = _password_errors(ctx, username)
    if errors:
        return _show(ctx, 400, errors)
    with ctx.db() as s:
        accounts.set_password(
            s,
            username,
            ctx.field("password"),
            actor=ctx.actor,
            min_length=ctx.web.min_password_length,
        )
    return ctx.redirect(
        "users_show",
        flash=f"Password for {username} changed; the account is unlocked.",
        user_id=ctx.path("user_id"),
    )


@page("users.manage")
def users_active(ctx: Ctx) -> Response:
    with ctx.db() as s:
        user = _user(s, ctx.path("user_id"))
        if user.username == ctx.actor:
            raise HTTPException(400)
        active = ctx.field("active") == "yes"
        accounts.set_active(s, user.username, active, actor=ctx.actor)
        username = user.username
    state = "enabled" if active else "disabled"
    return ctx.redirect(
        "users_show", flash=f"User {username} {state}.", user_id=ctx.path("user_id")
    )


@page("users.manage")
def users_remove(ctx: Ctx) -> Response:
    with ctx.db() as s:
        user = _user(s, ctx.path("user_id"))
        if user.username == ctx.actor:
            raise HTTPException(400)
        username = user.username
        accounts.remove_user(s, username, actor=ctx.actor)
    return ctx.redirect("users", flash=f"User {username} removed.")


ROUTES = [
    Route("/users", users_list, methods=["GET"], name="users"),
    Route("/users/new", users_new, methods=["GET"], name="users_new"),
    Route("/users/new", users_new_post, methods=["POST"], name="users_new_post"),
    Route("/users/{user_id:int}", users_show, methods=["GET"], name="users_show"),
    Route(
        "/users/{user_id:int}/password",
        users_password,
        methods=["POST"],
        name="users_password",
    ),
    Route("/users/{user_id:int}/active", users_active, methods=["POST"], name="users_active"),
    Route("/users/{user_id:int}/remove", users_remove, methods=["POST"], name="users_remove"),
]
