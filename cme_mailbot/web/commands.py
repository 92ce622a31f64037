"""`cme-mailbot web` (the console under uvicorn) and `cme-mailbot users` (console accounts).

Registered in cli.py with `cli.add_command(web)` and `cli.add_command(users)`; the click context
object is cli's `Ctx` (`.settings`, `.engine()`). Bad input is a one-line error, exit 2.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from cme_mailbot.db import session_scope
from cme_mailbot.web import accounts
from cme_mailbot.web import models as _models  # noqa: F401  (the tables exist before engine())
from cme_mailbot.web.models import Role
from cme_mailbot.web.settings import web_settings

if TYPE_CHECKING:
    from cme_mailbot.cli import Ctx


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.pass_obj
def web(c: Ctx, host: str, port: int) -> None:
    """The web console for council officers (put it behind the council's TLS proxy)."""
    import uvicorn

    from cme_mailbot.web.app import create_app

    app = create_app(c.settings, c.engine())
    # proxy_headers: a TLS proxy on 127.0.0.1 may say the request was https (Secure cookies).
    uvicorn.run(
        app,
        host=host,
        port=port,
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1",
        server_header=False,
        log_level="warning",
    )


@click.group()
def users() -> None:
    """Console users (administrators and officers)."""


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise click.UsageError("no password on standard input")
        return password
    value: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return value


def _min_length(c: Ctx) -> int:
    return web_settings(c.settings).min_password_length


def _run(c: Ctx, action: Any) -> Any:
    try:
        with session_scope(c.engine()) as s:
            return action(s)
    except accounts.AccountError as exc:
        raise click.UsageError(str(exc)) from None


@users.command("add")
@click.argument("username")
@click.option(
    "--role", required=True, type=click.Choice([r.value for r in Role]), help="What they may do."
)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_obj
def users_add(c: Ctx, username: str, role: str, password_stdin: bool) -> None:
    """Add a console user; the password is asked for twice (or read from stdin)."""
    try:
        name = accounts.normalise_username(username)
    except accounts.AccountError as exc:
        raise click.UsageError(str(exc)) from None
    password = _read_password(password_stdin)
    _run(
        c,
        lambda s: accounts.add_user(
            s, name, role, password, actor="cli", min_length=_min_length(c)
        ),
    )
    click.echo(f"added: {name} ({role})")


@users.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def users_list(c: Ctx, as_json: bool) -> None:
    """Every console user, with role and state."""
    rows = _run(
        c,
        lambda s: [
            {
                "username": u.username,
                "role": u.role.value,
                "active": u.active,
                "locked_until": u.locked_until.isoformat() if u.locked_until else None,
                "last_sign_in_at": u.last_sign_in_at.isoformat() if u.last_sign_in_at else None,
            }
            for u in accounts.list_users(s)
        ],
    )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        state = "active" if r["active"] else "disabled"
        if r["locked_until"]:
            state += f", locked until {r['locked_until'][:16]}"
        click.echo(f"{r['username']}\t{r['role']}\t{state}")


@users.command("remove")
@click.argument("username")
@click.pass_obj
def users_remove(c: Ctx, username: str) -> None:
    """Remove a console user and sign them out everywhere."""
    _run(c, lambda s: accounts.remove_user(s, username, actor="cli"))
    click.echo(f"removed: {username.strip().lower()}")


@users.command("set-password")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_obj
def users_set_password(c: Ctx, username: str, password_stdin: bool) -> None:
    """Set a user's password; also unlocks the account and signs them out everywhere."""
    _run(c, lambda s: accounts.get_user(s, username))  # say "no such user" before the prompt
    password = _read_password(password_stdin)
    _run(
        c,
        lambda s: accounts.set_password(
            s, username, password, actor="cli", min_length=_min_length(c)
        ),
    )
    click.echo(f"password set: {username.strip().lower()}")
