"""`cme-mailbot db`: the database schema's migrations, for operators and for developers.

These commands open the database without the start-up policy (`migrate.prepare_database`), which
would refuse to start against an old schema: upgrading that schema is their job.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import click
from sqlalchemy.engine import Engine

from cme_mailbot import migrate
from cme_mailbot.config import Settings
from cme_mailbot.db import make_engine


class HasSettings(Protocol):
    """The command line's context object (cli.Ctx)."""

    @property
    def settings(self) -> Settings: ...


@contextmanager
def _engine(c: HasSettings) -> Iterator[Engine]:
    engine = make_engine(c.settings.database.url)
    try:
        yield engine
    finally:
        engine.dispose()


@click.group()
def db() -> None:
    """The database schema: upgrade it, show its revision."""


@db.command("upgrade")
@click.pass_obj
def db_upgrade(c: HasSettings) -> None:
    """Bring the database to the newest schema revision (back it up first)."""
    with _engine(c) as engine:
        result = migrate.upgrade(engine)
    click.echo(result.line())


@db.command("current")
@click.option("--check", is_flag=True, help="Exit with status 1 unless the schema is the newest.")
@click.pass_obj
def db_current(c: HasSettings, check: bool) -> None:
    """Show the database's schema revision and the newest this version knows."""
    head = migrate.head_revision()
    with _engine(c) as engine:
        state = migrate.schema_state(engine)
    if state.revision == head:
        click.echo(f"{head} (newest)")
    elif state.empty:
        click.echo(f"none: empty database (newest: {head})")
    elif state.revision is None:
        click.echo(f"none: tables made before migrations (newest: {head})")
    else:
        click.echo(f"{state.revision} (newest: {head}; run `cme-mailbot db upgrade`)")
    if check and state.revision != head:
        sys.exit(1)


@db.command("revision")
@click.option("-m", "--message", required=True, help="What changed, e.g. 'add referral notes'.")
def db_revision(message: str) -> None:
    """For developers: write the next migration from the models' changes, to review and commit."""
    click.echo(str(migrate.new_revision(message)))
