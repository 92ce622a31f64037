"""`cme-mailbot users ...` and `cme-mailbot web`: accounts from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from sqlmodel import Session, select

from cme_mailbot.cli import Ctx
from cme_mailbot.models import AuditEvent
from cme_mailbot.web import accounts
from cme_mailbot.web.commands import users, web
from cme_mailbot.wiring import open_database


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path}/cme.db"\n[sender_auth]\nrequire = false\n',
        encoding="utf-8",
    )
    return path


def run(config: Path, *args: str, stdin: str | None = None) -> click.testing.Result:
    group = click.Group(commands={"users": users, "web": web})
    return CliRunner().invoke(group, list(args), input=stdin, obj=Ctx(config))


def test_add_list_set_password_and_remove_a_user(config: Path) -> None:
    added = run(config, "users", "add", "Jo.Bloggs", "--role", "officer", "--password-stdin",
                stdin="a long enough password\n")  # fmt: skip
    assert added.exit_code == 0, added.output
    assert "added: jo.bloggs (officer)" in added.output
    listed = json.loads(run(config, "users", "list", "--json").output)
    assert [(u["username"], u["role"], u["active"]) for u in listed] == [
        ("jo.bloggs", "officer", True)
    ]
    changed = run(
        config,
        "users",
        "set-password",
        "jo.bloggs",
        stdin="another password!!\nanother password!!\n",
    )
    assert changed.exit_code == 0, changed.output
    engine = open_database(Ctx(config).settings)
    with Session(engine) as s:
        user = accounts.get_user(s, "jo.bloggs")
        assert accounts.verify_password(user, "another password!!")
        assert "another" not in user.password_hash
    removed = run(config, "users", "remove", "jo.bloggs")
    assert removed.exit_code == 0 and "removed: jo.bloggs" in removed.output
    with Session(engine) as s:
        actions = [e.action for e in s.exec(select(AuditEvent)).all()]
    assert actions == ["user.add", "user.set_password", "user.remove"]


def test_the_prompt_asks_for_the_password_twice(config: Path) -> None:
    answers = "first long password\nsecond long password\n" + "first long password\n" * 2
    mismatch = run(config, "users", "add", "sam", "--role", "administrator", stdin=answers)
    assert mismatch.exit_code == 0, mismatch.output
    assert "do not match" in mismatch.output.lower()


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("users", "add", "sam", "--role", "boss", "--password-stdin"), "long password here\n",
         "Invalid value for '--role'"),
        (("users", "add", "sam", "--role", "officer", "--password-stdin"), "short\n",
         "at least 12 characters"),
        (("users", "add", "a b", "--role", "officer", "--password-stdin"), "long password here\n",
         "a username is"),
        (("users", "remove", "nobody"), None, "no such user: nobody"),
        (("users", "set-password", "nobody", "--password-stdin"), "long password here\n",
         "no such user: nobody"),
        (("users", "add", "sam", "--role", "officer", "--password-stdin"), "\n",
         "no password on standard input"),
    ],
)  # fmt: skip
def test_bad_input_is_a_one_line_usage_error(
    config: Path, args: tuple[str, ...], stdin: str | None, message: str
) -> None:
    result = run(config, *args, stdin=stdin)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_user_cannot_be_added_twice(config: Path) -> None:
    run(
        config,
        "users",
        "add",
        "sam",
        "--role",
        "officer",
        "--password-stdin",
        stdin="long password here\n",
    )
    again = run(
        config,
        "users",
        "add",
        "sam",
        "--role",
        "officer",
        "--password-stdin",
        stdin="long password here\n",
    )
    assert again.exit_code == 2 and "user already exists: sam" in again.output


def test_web_command_defaults_to_loopback_port_8080() -> None:
    options = {p.name: p.default for p in web.params}
    assert options["host"] == "127.0.0.1" and options["port"] == 8080
