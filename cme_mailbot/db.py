"""Database engine and sessions, from `[database] url`."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sqlite3
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, SQLModel, create_engine

from cme_mailbot import models  # noqa: F401  (registers the tables)
from cme_mailbot.web import models as web_models  # noqa: F401  (the console's tables)

# The statements before which Python's sqlite3 opens a write transaction (its legacy transaction
# control), and the explicit forms of it.
_WRITE = re.compile(r"\s*(INSERT|UPDATE|DELETE|REPLACE|BEGIN\s+(IMMEDIATE|EXCLUSIVE))\b", re.I)
LOCK_WAIT_SECONDS = 30.0  # as long as SQLite's own busy timeout below


class _WriteLockedCursor(sqlite3.Cursor):
    connection: WriteLockedConnection

    def execute(self, sql: str, parameters: Any = (), /) -> _WriteLockedCursor:
        self.connection.before_statement(sql)
        try:
            return super().execute(sql, parameters)
        finally:
            self.connection.let_go_if_done()

    def executemany(self, sql: str, parameters: Any, /) -> _WriteLockedCursor:
        self.connection.before_statement(sql)
        try:
            return super().executemany(sql, parameters)
        finally:
            self.connection.let_go_if_done()


class WriteLockedConnection(sqlite3.Connection):
    """A SQLite connection whose write transactions take a lock file first.

    SQLite lets one writer in at a time, and a writer that finds the database busy sleeps 1, 2,
    5, 10, 15... ms before it looks again. Two poll processes each committing several small
    transactions per message spent a third of their time in those sleeps. A write transaction
    here first takes an exclusive `flock` on `<database>-write.lock` (retried every 0.1-1 ms),
    so the writers of one database queue for each other promptly; the lock is let go when the
    transaction commits or rolls back. Readers never take it (WAL readers do not block
    writers). Anything else writing the file (the sqlite3 shell) still meets SQLite's own lock.
    """

    def __init__(self, database: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(database, *args, **kwargs)
        self._lock_fd: int | None = None
        self._held = False
        # Whether the next write transaction's commit waits for the disk (`defer_durability`),
        # and the `synchronous` level the connection has now (set by `make_engine`).
        self.durable = True
        self.wal = False
        self._synchronous_full = True
        name = os.fsdecode(database) if isinstance(database, (str, bytes, os.PathLike)) else ""
        if name and name != ":memory:" and not name.startswith("file:"):
            with contextlib.suppress(OSError):  # not ours to create: SQLite's lock alone
                self._lock_fd = os.open(f"{name}-write.lock", os.O_RDWR | os.O_CREAT, 0o660)
        # A connection dropped without close() must not hold the lock until the process ends.
        self._closer = weakref.finalize(self, _close_fd, self._lock_fd)

    def cursor(self, factory: Any = _WriteLockedCursor) -> Any:
        return super().cursor(factory)

    # The shortcuts run statements in C, past the cursor: send them through one.
    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        return cast(sqlite3.Cursor, self.cursor().execute(sql, parameters))

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        return cast(sqlite3.Cursor, self.cursor().executemany(sql, parameters))

    def executescript(self, script: str, /) -> sqlite3.Cursor:
        raise sqlite3.NotSupportedError("executescript bypasses the write lock")

    def before_statement(self, sql: str) -> None:
        if self._held or self.in_transaction or not _WRITE.match(sql):
            return
        # A write transaction is about to begin: the one moment SQLite lets `synchronous` change.
        self._set_synchronous(full=self.durable or not self.wal)
        if self._lock_fd is None:
            return
        deadline, pause = time.monotonic() + LOCK_WAIT_SECONDS, 0.0001
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise sqlite3.OperationalError("database is locked") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.001)
        self._held = True

    def _set_synchronous(self, *, full: bool) -> None:
        if full != self._synchronous_full:
            level = "FULL" if full else "NORMAL"
            sqlite3.Connection.cursor(self, sqlite3.Cursor).execute(f"PRAGMA synchronous={level}")
            self._synchronous_full = full

    def let_go_if_done(self) -> None:
        """Let the lock go once no write transaction is open: after a commit or a rollback, a
        write that committed by itself (autocommit), or one that failed before it began. The
        next write transaction waits for the disk again unless told otherwise."""
        if self.in_transaction:
            return
        self.durable = True
        if self._held and self._lock_fd is not None:
            self._held = False
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.let_go_if_done()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.let_go_if_done()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._held = False
            self._lock_fd = None
            self._closer()  # closing the descriptor lets the lock go too


def _close_fd(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


# UPDATE/INSERT ... RETURNING (the reference counter, the ledger and outbox inserts).
SQLITE_MINIMUM = (3, 35, 0)


def make_engine(url: str) -> Engine:
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        if sqlite3.sqlite_version_info < SQLITE_MINIMUM:
            raise RuntimeError(
                f"SQLite {sqlite3.sqlite_version} is too old: cme-mailbot needs 3.35 or later "
                "(RETURNING); use a newer Python build or PostgreSQL"
            )
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:" and not url.startswith("sqlite:///:memory:"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30, "factory": WriteLockedConnection}
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            mode = cur.execute("PRAGMA journal_mode=WAL").fetchone()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            # Every commit waits until it is on the disk, unless `defer_durability` says a later
            # one will take it there: a decision must survive a power cut once a message moves.
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()
            if isinstance(dbapi_conn, WriteLockedConnection):
                dbapi_conn.wal = bool(mode) and str(mode[0]).lower() == "wal"

    return engine


def defer_durability(conn: Connection) -> None:
    """Let the transaction `conn` is about to begin (or, on PostgreSQL, is in) commit without
    waiting for the disk. A power cut may then lose it, whole, never half of it, until a later
    transaction commits durably: with SQLite in WAL mode (`synchronous=NORMAL` for this one) or
    PostgreSQL (`synchronous_commit` off for this one), that commit takes every earlier one to
    the disk with it. The caller makes such a commit before anything outside the database (a
    message moved, an email sent) depends on this one. Elsewhere (SQLite not in WAL mode) the
    commit waits as usual."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
        return
    raw = conn.connection.dbapi_connection
    if isinstance(raw, WriteLockedConnection) and not raw.in_transaction:
        raw.durable = False


def wait_for_the_disk(conn: Connection) -> None:
    """Have the transaction `conn` is in commit only once it is on the disk, whatever the
    server's default: the commit that takes a pass's deferred decisions there with it. (SQLite's
    transactions wait unless `defer_durability` said otherwise.)"""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL synchronous_commit TO ON")


def make_durable(engine: Engine) -> None:
    """Take every commit made so far without waiting for the disk (`defer_durability`) there.

    SQLite (WAL): such a commit's pages are written to the `-wal` file, not yet synced; one
    `fsync` of that file is what a commit that waits would do (SQLite skips an UPDATE that
    changes nothing, so a no-op write would not do). PostgreSQL: a transaction with an id of
    its own, committed with `synchronous_commit` on, waits until the log is flushed past it."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            wait_for_the_disk(conn)
            conn.exec_driver_sql("SELECT txid_current()")
        return
    path = engine.url.database
    if engine.dialect.name != "sqlite" or not path or path.startswith((":memory:", "file:")):
        return
    try:
        fd = os.open(f"{path}-wal", os.O_RDONLY)
    except FileNotFoundError:
        return  # no WAL: every commit is in the database file, synced by its checkpoint
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_all(engine: Engine) -> None:
    SQLModel.metadata.create_all(engine)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One unit of work: committed on success, rolled back on any error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
