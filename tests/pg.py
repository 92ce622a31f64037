"""A throw-away PostgreSQL server for tests, and the switch that runs the suite on it.

One server per test session (per xdist worker), started on demand from the Debian/PGDG binaries:
`initdb` into a temporary directory, `postgres` on 127.0.0.1 and a free port, its socket in that
directory, fsync off. Each test that wants PostgreSQL gets a fresh database, dropped afterwards.
As root the server runs as the `postgres` system user (PostgreSQL refuses root); as anyone else
it runs as that user. Use the fixtures from any test module or conftest with

    pytest_plugins = ["tests.pg"]

`database_url` is the switch: a SQLite file under the test's tmp dir, or a fresh PostgreSQL
database when CME_TEST_DATABASE=postgresql (CME_TEST_PG_BIN names another bin directory).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

DATABASE_ENV = "CME_TEST_DATABASE"
PG_BIN_ENV = "CME_TEST_PG_BIN"
SUPERUSER = "cme_test"

# Settings for a disposable server: durability off, enough connections for CLI subprocesses.
_SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
    "timezone": "UTC",
}


def selected_database() -> str:
    """Which database the suite runs on: "sqlite" (default) or "postgresql"."""
    value = os.environ.get(DATABASE_ENV, "sqlite").strip().lower() or "sqlite"
    if value in ("postgres", "pg"):
        value = "postgresql"
    if value not in ("sqlite", "postgresql"):
        raise pytest.UsageError(f"{DATABASE_ENV}={value!r}: expected sqlite or postgresql")
    return value


def pg_bin_dir() -> Path | None:
    """The directory holding initdb and postgres, newest installed major version first."""
    if os.environ.get(PG_BIN_ENV):
        return Path(os.environ[PG_BIN_ENV])
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def postgres_available() -> bool:
    bindir = pg_bin_dir()
    return bindir is not None and os.access(bindir / "initdb", os.X_OK)


def skip_without_postgres() -> None:
    if not postgres_available():
        pytest.skip("PostgreSQL not installed (no initdb): apt-get install postgresql")


def _free_port() -> int:
    from tests.servers import free_port

    return free_port()


@dataclass
class PgServer:
    """A running PostgreSQL: trust authentication for SUPERUSER, on 127.0.0.1 only."""

    root: Path
    port: int
    bindir: Path
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def _connect(self, dbname: str = "postgres") -> Any:
        import psycopg

        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=SUPERUSER,
            dbname=dbname,
            autocommit=True,
            connect_timeout=5,
        )

    def execute(self, sql: str, dbname: str = "postgres") -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
        with self._connect(dbname) as conn:
            conn.execute(sql)  # type: ignore[arg-type]  # our own literal SQL

    def create_database(self, prefix: str = "cme") -> str:
        """A new, empty database; returns its SQLAlchemy URL."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        # WITH (FORCE) ends sessions a test left open (e.g. a killed subprocess).
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def start(self) -> None:
        options = [arg for k, v in _SERVER_SETTINGS.items() for arg in ("-c", f"{k}={v}")]
        self._proc = subprocess.Popen(
            [
                str(self.bindir / "postgres"),
                "-D",
                str(self.data_dir),
                "-k",
                str(self.root),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                *options,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log_file.open("ab"),
            start_new_session=True,
            **_as_server_user(),
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited ({self._proc.returncode})\n{self.log_tail()}")
            try:
                with self._connect():
                    return
            except Exception:  # not accepting connections yet
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"postgres did not accept connections in 30 s\n{self.log_tail()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGQUIT)  # immediate shutdown: nothing here needs to survive
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])


def _server_user() -> pwd.struct_passwd | None:
    """The account to run PostgreSQL as when we are root (it refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and there is no `postgres` or `nobody` user to run as")


def _as_server_user() -> dict[str, Any]:
    user = _server_user()
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def start_postgres() -> PgServer:
    """initdb into a fresh temporary directory and start a server on a free loopback port."""
    bindir = pg_bin_dir()
    if bindir is None or not os.access(bindir / "initdb", os.X_OK):
        raise RuntimeError("PostgreSQL not installed (no initdb); set CME_TEST_PG_BIN")
    # Not under pytest's tmp dirs: those are 0700 root-owned when we are root, and the Unix
    # socket path must stay under ~107 bytes.
    root = Path(tempfile.mkdtemp(prefix="cme-pg-"))
    user = _server_user()
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    env = {**os.environ, "LC_ALL": "C.UTF-8", "TZ": "UTC"}
    env.pop("PGDATA", None)
    try:
        subprocess.run(
            [str(bindir / "initdb"), "-D", str(root / "data"), "-U", SUPERUSER, "--auth=trust",
             "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync", "--no-instructions"],
            check=True,
            capture_output=True,
            env=env,
            cwd=root,
            timeout=120,
            **_as_server_user(),
        )  # fmt: skip
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed:\n{exc.stderr.decode(errors='replace')}") from None
    last: Exception | None = None
    for _ in range(3):  # the free port can be taken between choosing and binding it
        server = PgServer(root, _free_port(), bindir)
        try:
            server.start()
            return server
        except RuntimeError as exc:
            last = exc
    shutil.rmtree(root, ignore_errors=True)
    raise RuntimeError(f"could not start postgres: {last}")


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server (started on first use)."""
    if selected_database() != "postgresql":
        skip_without_postgres()
    server = start_postgres()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def pg_database(pg_server: PgServer) -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL database, dropped after the test."""
    url = pg_server.create_database()
    try:
        yield url
    finally:
        pg_server.drop_database(url)


@pytest.fixture
def database_url(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The `[database] url` for a test deployment: SQLite, or PostgreSQL when switched on."""
    if selected_database() == "postgresql":
        return str(request.getfixturevalue("pg_database"))
    return f"sqlite:///{tmp_path}/cme/cme.db"
