"""Schema migrations on SQLite and PostgreSQL: the migrations build exactly the models' schema,
and start-up creates, stamps, upgrades or refuses as the policy in cme_mailbot/migrate.py says.

The PostgreSQL cases use the throw-away server in tests/pg.py (skipped if PostgreSQL is not
installed); the policy is also checked end to end through the real command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from alembic import command

from cme_mailbot import migrate
from cme_mailbot.db import make_engine

if TYPE_CHECKING:  # imported at run time by pytest_plugins, which rewrites its asserts
    from tests.pg import PgServer

pytest_plugins = ["tests.pg"]


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_database"))
    return f"sqlite:///{tmp_path}/cme.db"


@pytest.fixture
def engine(url: str) -> Iterator[sa.Engine]:
    eng = make_engine(url)
    yield eng
    eng.dispose()


def migrate_to(engine: sa.Engine, revision: str, *, down: bool = False) -> None:
    with engine.begin() as conn:
        cfg = migrate.alembic_config(conn)
        (command.downgrade if down else command.upgrade)(cfg, revision)


def previous_revision() -> str:
    script = migrate.script_directory().get_revision(migrate.head_revision())
    assert script is not None
    if script.down_revision is None:
        pytest.skip("needs at least two revisions")
    assert isinstance(script.down_revision, str)
    return script.down_revision


def model_tables() -> set[str]:
    return set(migrate.target_metadata().tables)


def create_all_as_before_migrations(engine: sa.Engine) -> None:
    """What start-up did before migrations: create_all, the database naming the constraints."""
    md = sa.MetaData()
    for t in migrate.target_metadata().sorted_tables:
        t.to_metadata(md)
    for t in md.tables.values():
        for c in t.constraints:
            if isinstance(c, (sa.UniqueConstraint, sa.ForeignKeyConstraint)):
                c.name = None
    md.create_all(engine)


def db_tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names()) - {migrate.VERSION_TABLE}


# ---- the migrations themselves ----------------------------------------------------------------


def test_upgrade_from_empty_creates_every_table(engine: sa.Engine) -> None:
    result = migrate.prepare_database(engine)
    assert result.action == "created"
    assert db_tables(engine) == model_tables()
    assert migrate.current_revision(engine) == migrate.head_revision()
    assert migrate.is_up_to_date(engine)


def test_models_and_migrations_agree(engine: sa.Engine) -> None:
    """Whoever adds a table or column adds a migration: `cme-mailbot db revision -m ...`."""
    migrate.upgrade(engine)
    with engine.connect() as conn:
        diffs = migrate.schema_differences(conn)
    assert not diffs, (
        "the models and cme_mailbot/migrations differ: "
        + "; ".join(migrate.describe_difference(d) for d in diffs)
        + ". Run `cme-mailbot db revision -m 'what changed'`, review the new file, commit it."
    )
    if engine.dialect.name == "postgresql":
        # Alembic does not compare enum members; a member missing from the database type would
        # only fail when first written.
        with engine.connect() as conn:
            for column in _enum_columns():
                labels = conn.execute(
                    sa.text(
                        "SELECT e.enumlabel FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid "
                        "WHERE t.typname = :name ORDER BY e.enumsortorder"
                    ),
                    {"name": column.type.name},
                ).scalars()
                assert list(labels) == list(column.type.enums), (
                    f"{column.table.name}.{column.name}: enum type {column.type.name} differs "
                    "from the model; add a migration with ALTER TYPE ... ADD VALUE"
                )


def _enum_columns() -> list[Any]:
    return [
        c
        for t in migrate.target_metadata().tables.values()
        for c in t.columns
        if isinstance(c.type, sa.Enum)
    ]


def test_downgrade_to_base_leaves_nothing_and_upgrade_again_works(engine: sa.Engine) -> None:
    migrate.upgrade(engine)
    migrate_to(engine, "base", down=True)
    assert db_tables(engine) == set()
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            types = conn.execute(sa.text("SELECT typname FROM pg_type WHERE typtype = 'e'"))
            assert list(types) == []
    assert migrate.upgrade(engine).action == "created"


def test_the_migrations_form_one_line_of_history() -> None:
    script = migrate.script_directory()
    assert len(script.get_heads()) == 1
    revisions = [s.revision for s in script.walk_revisions()]
    assert revisions == sorted(revisions, reverse=True)  # 0002 follows 0001, and so on
    assert all(r.isdigit() and len(r) == 4 for r in revisions)


def test_values_round_trip_through_the_migrated_schema(engine: sa.Engine) -> None:
    """Aware UTC datetimes, bytes, JSON and enums survive on both databases."""
    import datetime as dt

    from sqlmodel import Session, select

    from cme_mailbot.models import InboundMessage, MessageBlob, OutboundEmail, Outcome

    migrate.upgrade(engine)
    when = dt.datetime(2026, 3, 29, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    with Session(engine) as s:
        msg = InboundMessage(account="a", folder="INBOX", location="1:1", dedupe_key="k",
                             sha256="0" * 64, outcome=Outcome.NO_FORM, decided_at=when)  # fmt: skip
        s.add(msg)
        s.flush()
        assert msg.id is not None
        s.add(MessageBlob(inbound_id=msg.id, raw=b"\x00\xff raw"))
        s.add(OutboundEmail(kind="reply", message_id="<m@x>", recipients=["a@b.example"],
                            raw=b"x", inbound_id=msg.id))  # fmt: skip
        s.commit()
    with Session(engine) as s:
        got = s.exec(select(InboundMessage)).one()
        assert got.outcome is Outcome.NO_FORM
        assert got.decided_at == when and got.decided_at.tzinfo == dt.UTC
        assert s.exec(select(MessageBlob)).one().raw == b"\x00\xff raw"
        assert s.exec(select(OutboundEmail)).one().recipients == ["a@b.example"]


# ---- the start-up policy ----------------------------------------------------------------------


def test_an_up_to_date_database_is_left_alone(engine: sa.Engine) -> None:
    migrate.prepare_database(engine)
    assert migrate.prepare_database(engine, auto_upgrade=False).action == "current"


def test_an_older_database_is_upgraded_when_auto_upgrade_allows(engine: sa.Engine) -> None:
    older = previous_revision()
    migrate_to(engine, older)
    result = migrate.prepare_database(engine, auto_upgrade=True)
    assert (result.action, result.previous) == ("upgraded", older)
    assert migrate.is_up_to_date(engine)
    assert db_tables(engine) == model_tables()


def test_an_older_database_is_refused_without_auto_upgrade(engine: sa.Engine) -> None:
    older = previous_revision()
    migrate_to(engine, older)
    with pytest.raises(migrate.SchemaNotCurrent) as err:
        migrate.prepare_database(engine, auto_upgrade=False)
    message = str(err.value)
    assert "\n" not in message
    assert older in message and migrate.head_revision() in message
    assert "cme-mailbot db upgrade" in message
    assert migrate.current_revision(engine) == older  # untouched


def test_auto_upgrade_defaults_to_on_for_sqlite_and_off_for_postgresql(engine: sa.Engine) -> None:
    migrate_to(engine, previous_revision())
    if engine.dialect.name == "sqlite":
        assert migrate.prepare_database(engine).action == "upgraded"
    else:
        with pytest.raises(migrate.SchemaNotCurrent):
            migrate.prepare_database(engine)


def test_an_empty_database_is_created_even_without_auto_upgrade(engine: sa.Engine) -> None:
    assert migrate.prepare_database(engine, auto_upgrade=False).action == "created"


def test_a_database_from_before_migrations_is_stamped_when_it_matches(engine: sa.Engine) -> None:
    create_all_as_before_migrations(engine)
    assert migrate.current_revision(engine) is None
    assert migrate.prepare_database(engine, auto_upgrade=False).action == "stamped"
    assert migrate.is_up_to_date(engine)


def test_a_database_from_before_migrations_that_differs_is_refused(engine: sa.Engine) -> None:
    create_all_as_before_migrations(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE referral DROP COLUMN status_note"))
    with pytest.raises(migrate.SchemaNotCurrent) as err:
        migrate.prepare_database(engine, auto_upgrade=True)
    assert "referral.status_note" in str(err.value)
    assert "\n" not in str(err.value)
    assert migrate.current_revision(engine) is None


def test_a_database_from_a_newer_version_is_refused(engine: sa.Engine) -> None:
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(migrate.SchemaNotCurrent, match="9999 is unknown"):
        migrate.prepare_database(engine, auto_upgrade=True)


# ---- two instances starting at once -----------------------------------------------------------

_STARTER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from cme_mailbot import migrate
    go = Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.005)
    print(migrate.prepare_database(sys.argv[1], auto_upgrade=True).action)
    """
)


def _start(url: str, go: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "CME_MAILBOT_CONFIG": ""}
    return subprocess.Popen([sys.executable, "-c", _STARTER, url, str(go)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)  # fmt: skip


@pytest.mark.parametrize("start", ["empty", "older"])
def test_instances_starting_together_migrate_once(
    url: str, engine: sa.Engine, tmp_path: Path, start: str
) -> None:
    if start == "older":
        migrate_to(engine, previous_revision())
    go = tmp_path / "go"
    procs = [_start(url, go) for _ in range(3)]
    time.sleep(1.0)  # let them import and wait at the line
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(out.strip().splitlines()[-1])  # after any log lines
    assert sorted(results) == sorted([{"empty": "created", "older": "upgraded"}[start]]
                                     + ["current"] * 2)  # fmt: skip
    assert migrate.is_up_to_date(engine)


def test_upgrade_waits_for_the_postgresql_advisory_lock(pg_database: str, tmp_path: Path) -> None:
    holder = sa.create_engine(pg_database)
    go = tmp_path / "go"
    go.touch()
    with holder.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:id)"), {"id": migrate.MIGRATION_LOCK_ID})
        proc = _start(pg_database, go)
        time.sleep(2.0)
        assert proc.poll() is None, proc.communicate()  # still waiting for the lock
        assert migrate.current_revision(pg_database) is None
        conn.execute(sa.text("SELECT pg_advisory_unlock(:id)"), {"id": migrate.MIGRATION_LOCK_ID})
    out, err = proc.communicate(timeout=60)
    holder.dispose()
    assert (proc.returncode, out.strip().splitlines()[-1]) == (0, "created"), err
    assert migrate.is_up_to_date(pg_database)


# ---- through the command line -----------------------------------------------------------------


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env.pop("CME_MAILBOT_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "cme_mailbot.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def write_config(tmp_path: Path, url: str, auto_upgrade: bool | None) -> Path:
    config = tmp_path / "config.toml"
    setting = "" if auto_upgrade is None else f"auto_upgrade = {str(auto_upgrade).lower()}\n"
    config.write_text(
        f'[database]\nurl = "{url}"\n{setting}'
        f'[mailbox]\nbackend = "maildir"\npath = "{tmp_path}/mailbox"\n'
        f'[outbound]\nbackend = "outbox"\npath = "{tmp_path}/outbox"\n'
        "[sender_auth]\nrequire = false\n",
        encoding="utf-8",
    )
    return config


def test_start_up_refuses_an_older_schema_with_one_line_then_db_upgrade_fixes_it(
    url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    older = previous_revision()
    migrate_to(engine, older)
    config = write_config(tmp_path, url, auto_upgrade=False)

    refused = run_cli(config, "contacts", "list")
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith("cme-mailbot: error: database: schema is at revision")
    assert "cme-mailbot db upgrade" in refused.stderr

    current = run_cli(config, "db", "current", "--check")
    assert current.returncode == 1
    assert current.stdout.startswith(older)

    upgraded = run_cli(config, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.strip() == f"database upgraded from {older} to {migrate.head_revision()}"
    assert run_cli(config, "contacts", "list").returncode == 0
    assert run_cli(config, "db", "current", "--check").stdout.strip().endswith("(newest)")


def test_first_start_creates_the_schema_through_migrations(
    database_url: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, database_url, auto_upgrade=None)
    assert run_cli(config, "db", "current").stdout.startswith("none: empty database")
    added = run_cli(config, "contacts", "add", "head@school.example", "--school-urn", "123456")
    assert added.returncode == 0, added.stderr
    assert migrate.is_up_to_date(database_url)


def test_db_upgrade_stamps_a_database_from_before_migrations(url: str, tmp_path: Path) -> None:
    eng = make_engine(url)
    create_all_as_before_migrations(eng)
    eng.dispose()
    config = write_config(tmp_path, url, auto_upgrade=False)
    result = run_cli(config, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert "recorded as" in result.stdout
    assert run_cli(config, "contacts", "list").returncode == 0


def test_pg_server_fixture_is_loopback_only(pg_server: PgServer) -> None:
    assert "@127.0.0.1:" in pg_server.url()


def test_the_newest_file_name_is_alembics_head() -> None:
    """Start-up compares the database with the newest file name, without loading Alembic."""
    assert migrate.newest_revision_file() == migrate.head_revision()


def test_an_up_to_date_start_does_not_load_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cme.db"
    migrate.upgrade(url)
    code = (
        "import sys; from cme_mailbot import migrate; "
        f"print(migrate.prepare_database({url!r}).action, 'alembic' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["current", "False"]
