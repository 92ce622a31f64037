"""Schema migrations (Alembic revisions in cme_mailbot/migrations) and the start-up policy.

At start-up `prepare_database` brings the database to the schema this version needs when that is
safe: a brand-new database is created by the migrations; one at an older revision is upgraded only
if `[database] auto_upgrade` allows it, else start-up refuses with a one-line error naming
`cme-mailbot db upgrade`; one made before migrations existed is stamped if it matches the models.
Every change happens under a lock (pg_advisory_xact_lock on PostgreSQL, a lock file beside a
SQLite database), so two instances starting at once migrate once.
"""

from __future__ import annotations

import fcntl
import importlib
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import structlog
from sqlalchemy import MetaData, UniqueConstraint, column, inspect, select, table, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.types import TypeDecorator
from sqlmodel import SQLModel

from cme_mailbot.config import ConfigError
from cme_mailbot.db import make_engine

# Alembic is imported only when the schema must be read closely or changed: every command-line
# start checks the schema, and the usual answer ("up to date") needs no Alembic at all.
if TYPE_CHECKING:
    from alembic.autogenerate.api import AutogenContext
    from alembic.config import Config
    from alembic.script import ScriptDirectory

log = structlog.get_logger("cme_mailbot.migrate")
# Alembic narrates at info (plugins loaded, each step run); we log what was done, once.
logging.getLogger("alembic").setLevel(logging.WARNING)

VERSIONS = Path(__file__).resolve().parent / "migrations" / "versions"

# Every module that defines tables. A new one goes here, and gets a migration (a test checks).
MODEL_MODULES = ("cme_mailbot.models", "cme_mailbot.web.models")

# The key of the PostgreSQL advisory lock held while migrating: "cme_migr" in ASCII.
MIGRATION_LOCK_ID = 0x636D655F6D696772

VERSION_TABLE = "alembic_version"

Action = Literal["current", "created", "upgraded", "stamped"]


class SchemaNotCurrent(ConfigError):
    """The database's schema does not fit this version and will not be changed automatically.

    A ConfigError because, like a bad setting, it stops start-up with one line and exit status 2.
    """


@dataclass(frozen=True)
class SchemaState:
    """What the database holds: its migration revision (None if never migrated) and tables."""

    revision: str | None
    tables: frozenset[str]

    @property
    def empty(self) -> bool:
        return self.revision is None and not self.tables


@dataclass(frozen=True)
class Prepared:
    """What `prepare_database` or `upgrade` did."""

    action: Action
    revision: str
    previous: str | None = None

    def line(self) -> str:
        if self.action == "upgraded":
            return f"database upgraded from {self.previous} to {self.revision}"
        if self.action == "created":
            return f"database created at {self.revision}"
        if self.action == "stamped":
            return f"database matched the models; recorded as {self.revision}"
        return f"database is up to date at {self.revision}"


# ---- Alembic configuration --------------------------------------------------------------------


def target_metadata() -> MetaData:
    """SQLModel's metadata with every table module imported."""
    for name in MODEL_MODULES:
        importlib.import_module(name)
    return SQLModel.metadata


def alembic_config(connection: Connection | None = None) -> Config:
    """The configuration env.py reads; no alembic.ini, so it works from an installed package."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "cme_mailbot:migrations")
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    cfg.attributes["connection"] = connection
    return cfg


def script_directory() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision; raises if the revisions have forked into two heads."""
    head = script_directory().get_current_head()
    if head is None:
        raise RuntimeError("cme_mailbot/migrations has no revisions")
    return head


def newest_revision_file() -> str | None:
    """The head read from file names alone (0001_initial.py ...), without loading Alembic.

    None unless every revision file follows the numbered pattern `new_revision` writes (a test
    checks that this agrees with Alembic's own answer).
    """
    names = [p.name for p in VERSIONS.glob("*.py") if p.name != "__init__.py"]
    if not names or not all(n[:4].isdigit() and n[4] == "_" for n in names):
        return None
    return max(n[:4] for n in names)


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    # Migrations must not import the models (they change; a migration is history), so a
    # TypeDecorator such as UTCDateTime or SQLModel's AutoString is written as its plain
    # SQLAlchemy type: sa.DateTime(timezone=True), sa.String(length=6).
    if type_ == "type" and isinstance(obj, TypeDecorator):
        impl = obj.impl_instance
        if type(impl).__module__.startswith("sqlalchemy."):
            return f"sa.{impl!r}"
    return False


def migration_options(connection: Connection) -> dict[str, Any]:
    """The options env.py, autogenerate and the drift check all configure Alembic with."""
    return {
        "target_metadata": target_metadata(),
        "render_as_batch": connection.dialect.name == "sqlite",
        "compare_type": True,
        "render_item": _render_item,
        "version_table": VERSION_TABLE,
    }


# ---- reading the database ---------------------------------------------------------------------


@contextmanager
def _engine(engine_or_url: Engine | str) -> Iterator[Engine]:
    if isinstance(engine_or_url, Engine):
        yield engine_or_url
        return
    engine = make_engine(engine_or_url)
    try:
        yield engine
    finally:
        engine.dispose()


def _state(conn: Connection) -> SchemaState:
    tables = set(inspect(conn).get_table_names())
    revision = None
    if VERSION_TABLE in tables:
        tables.discard(VERSION_TABLE)
        revision = _recorded_revision(conn)
    return SchemaState(revision, frozenset(tables))


def _recorded_revision(conn: Connection) -> str | None:
    version = table(VERSION_TABLE, column("version_num"))
    rows = conn.execute(select(version.c.version_num)).scalars().all()
    if len(rows) > 1:
        raise SchemaNotCurrent(f"database: {VERSION_TABLE} holds {len(rows)} rows; expected one")
    return str(rows[0]) if rows else None


def schema_state(engine_or_url: Engine | str) -> SchemaState:
    with _engine(engine_or_url) as engine, engine.connect() as conn:
        return _state(conn)


def current_revision(engine_or_url: Engine | str) -> str | None:
    """The revision recorded in the database, or None if it has never been migrated."""
    return schema_state(engine_or_url).revision


def is_up_to_date(engine_or_url: Engine | str) -> bool:
    return current_revision(engine_or_url) == head_revision()


def schema_differences(conn: Connection) -> list[Any]:
    """How the database differs from the models (Alembic autogenerate's diff; [] if none)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    ctx = MigrationContext.configure(conn, opts=migration_options(conn))
    return list(compare_metadata(ctx, target_metadata()))


def describe_difference(diff: Any) -> str:
    """One short phrase for one autogenerate diff, e.g. "add_column pollerstatus.last_backlog"."""
    if isinstance(diff, list):  # column modifications come as a list of tuples
        diff = diff[0]
    kind, *rest = diff
    what = ""
    for item in rest:
        table = getattr(item, "table", None)
        name = getattr(item, "name", None)
        columns = [c.name for c in getattr(item, "columns", ())]
        if table is not None and name is not None:
            what = f"{table.name}.{name}"
        elif table is not None and columns:
            what = f"{table.name}({', '.join(columns)})"
        elif name is not None:
            what = str(name)
        elif isinstance(item, str) and not what:
            what = item
    return f"{kind} {what}".strip()


def _beyond_constraint_names(conn: Connection, diffs: list[Any]) -> list[Any]:
    """The differences left once unique constraints that differ only in name are set aside.

    Tables made by create_all before migrations carry the database's own constraint names
    (PostgreSQL's "<table>_<column>_key", SQLite's unnamed ones), not the models' names.
    """
    db = inspect(conn)

    def in_database(table: str) -> set[tuple[str, ...]]:
        found = {tuple(sorted(u["column_names"])) for u in db.get_unique_constraints(table)}
        for i in db.get_indexes(table):
            if i["unique"]:
                found.add(tuple(sorted(str(c) for c in i["column_names"])))
        return found

    def in_models(table: str) -> set[tuple[str, ...]]:
        t = target_metadata().tables[table]
        found = {tuple(sorted(c.name for c in u.columns)) for u in t.constraints
                 if isinstance(u, UniqueConstraint)}  # fmt: skip
        found |= {tuple(sorted(c.name for c in i.columns)) for i in t.indexes if i.unique}
        return found | {(c.name,) for c in t.columns if c.unique}

    kept = []
    for diff in diffs:
        if isinstance(diff, tuple) and diff[0] in ("add_constraint", "remove_constraint"):
            constraint = diff[1]
            if isinstance(constraint, UniqueConstraint) and constraint.table is not None:
                columns = tuple(sorted(c.name for c in constraint.columns))
                table = constraint.table.name
                other = in_database if diff[0] == "add_constraint" else in_models
                if table in target_metadata().tables and columns in other(table):
                    continue
        kept.append(diff)
    return kept


# ---- changing the database --------------------------------------------------------------------


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def _migration_transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction that only one process at a time can hold for migrating this database."""
    if engine.dialect.name == "postgresql":
        # Released at commit or rollback, so a crashed migration never leaves it held.
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
            yield conn
        return
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            yield conn
        return
    database = engine.url.database
    on_disk = database not in (None, "", ":memory:") and not str(database).startswith("file:")
    # SQLite's own lock waits only busy_timeout; a lock file waits as long as a migration takes.
    lock = _file_lock(Path(f"{database}-migrate.lock")) if on_disk else _no_lock()
    with lock, engine.connect() as conn, _sqlite_transactional_ddl(conn):
        yield conn


@contextmanager
def _sqlite_transactional_ddl(conn: Connection) -> Iterator[None]:
    """Run the migration in one real SQLite transaction, DDL included.

    Python's sqlite3 opens transactions only before INSERT/UPDATE/DELETE, so a failed batch
    migration would leave half-copied tables behind; here the driver is put in autocommit mode
    and we BEGIN ourselves. Foreign keys are off meanwhile (batch migrations copy and drop
    tables), which SQLite allows to change only outside a transaction.
    """
    raw = conn.connection.driver_connection
    assert raw is not None
    isolation = raw.isolation_level
    raw.isolation_level = None
    try:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield
            failed = conn.exec_driver_sql("PRAGMA foreign_key_check").first()
            if failed is not None:
                raise RuntimeError(f"migration left a broken foreign key in table {failed[0]}")
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
    finally:
        conn.exec_driver_sql("PRAGMA foreign_keys=ON")
        conn.commit()
        raw.isolation_level = isolation


@contextmanager
def _no_lock() -> Iterator[None]:
    yield


def _upgrade(conn: Connection, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(conn), revision)


def _stamp(conn: Connection, revision: str) -> None:
    from alembic import command

    command.stamp(alembic_config(conn), revision)


def auto_upgrade_default(url: str) -> bool:
    """SQLite: upgrade on start-up. PostgreSQL: production, so an operator runs `db upgrade`."""
    return url.startswith("sqlite")


def prepare_database(engine_or_url: Engine | str, *, auto_upgrade: bool | None = None) -> Prepared:
    """The start-up policy: create, stamp or upgrade the schema when safe, else refuse.

    `auto_upgrade` None means `auto_upgrade_default` for the database's URL. Raises
    SchemaNotCurrent (one line, for the operator) when the schema will not be changed.
    """
    with _engine(engine_or_url) as engine:
        newest = newest_revision_file()
        if newest is not None and _fast_revision(engine) == newest:
            return Prepared("current", newest)  # the usual case: no lock, no Alembic
        head = head_revision()
        if auto_upgrade is None:
            auto_upgrade = auto_upgrade_default(engine.url.drivername)
        with _migration_transaction(engine) as conn:
            # Again under the lock: another instance may have migrated while we waited.
            return _bring_to_head(conn, head, auto_upgrade=auto_upgrade)


def _fast_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table(VERSION_TABLE):
            return None
        return _recorded_revision(conn)


def upgrade(engine_or_url: Engine | str) -> Prepared:
    """`cme-mailbot db upgrade`: bring the database to the newest revision, whatever its age."""
    return prepare_database(engine_or_url, auto_upgrade=True)


def _bring_to_head(conn: Connection, head: str, *, auto_upgrade: bool) -> Prepared:
    state = _state(conn)
    if state.revision == head:
        return Prepared("current", head)
    if state.empty:
        _upgrade(conn)
        log.debug("database created", revision=head)  # every first start: not news
        return Prepared("created", head)
    if state.revision is None:
        diffs = _beyond_constraint_names(conn, schema_differences(conn))
        if diffs:
            shown = "; ".join(describe_difference(d) for d in diffs[:3])
            more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
            raise SchemaNotCurrent(
                "database: its tables predate migrations and differ from this version's models "
                f"({shown}{more}); back it up and bring it to revision {head} by hand"
            )
        _stamp(conn, head)
        log.info("database stamped", revision=head)
        return Prepared("stamped", head)
    known = {s.revision for s in script_directory().walk_revisions()}
    if state.revision not in known:
        raise SchemaNotCurrent(
            f"database: schema revision {state.revision} is unknown to this version of "
            f"cme-mailbot (newest known: {head}); was it upgraded by a newer version?"
        )
    if not auto_upgrade:
        raise SchemaNotCurrent(
            f"database: schema is at revision {state.revision} and this version needs {head}; "
            "back up the database and run `cme-mailbot db upgrade` "
            "(or set [database] auto_upgrade = true)"
        )
    _upgrade(conn)
    log.info("database upgraded", previous=state.revision, revision=head)
    return Prepared("upgraded", head, state.revision)


def new_revision(message: str) -> Path:
    """Autogenerate the next revision from the models (for developers; review it before use).

    The diff is taken against a scratch SQLite database upgraded to the current head.
    """
    from alembic import command

    script = script_directory()
    numbers = [int(s.revision) for s in script.walk_revisions() if s.revision.isdigit()]
    rev_id = f"{max(numbers, default=0) + 1:04d}"
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{tmp}/scratch.db")
        try:
            if script.get_heads():
                prepare_database(engine)
            with engine.begin() as conn:
                cfg = alembic_config(conn)
                result = command.revision(cfg, message=message, autogenerate=True, rev_id=rev_id)
        finally:
            engine.dispose()
    scripts = result if isinstance(result, list) else [result]
    if not scripts or scripts[0] is None:
        raise RuntimeError("alembic wrote no revision")
    return Path(scripts[0].path)
