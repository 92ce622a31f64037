"""Never lose or double a referral: crashes, restarts, two instances, server outages.

Real Dovecot IMAP and a real SMTP server (aiosmtpd); `cme-mailbot run` and `poll --once` as the
operator runs them, in subprocesses. Kill times come from a seeded generator: the assertions
hold whatever moment a kill lands on.
"""

from __future__ import annotations

import datetime as dt
import email
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cme_mailbot.forms.fill import fill_pdf
from cme_mailbot.samples import (
    AUTHSERV_ID,
    SAMPLE_SCHOOL,
    SAMPLE_SENDER,
    SAMPLE_URN,
    make_upn,
    referral_email,
    referral_values,
)

from .servers import DovecotServer, SmtpServer, catches_signal

pytestmark = pytest.mark.dovecot

PASSWORD_ENV = "CME_TEST_IMAP_PASSWORD"

CONFIG = """\
[database]
url = "sqlite:///{root}/cme.db"

[mailbox]
backend = "imap"
host = "127.0.0.1"
port = {imap_port}
security = "none"
username = "cme"
password_env = "{password_env}"
timeout_seconds = 10
batch_size = 25

[outbound]
backend = "smtp"
host = "127.0.0.1"
port = {smtp_port}
security = "none"
from_address = "cme-referrals@council.example.gov.uk"
retry_base_seconds = 1
timeout_seconds = 5

[sender_auth]
trusted_authserv_ids = ["{authserv}"]

[poller]
interval_seconds = {interval}
lease_seconds = 3
max_attempts = 50
workers = {workers}
parallel_from = {parallel_from}

[logging]
format = "json"
level = "info"
"""


@dataclass
class Live:
    root: Path
    config: Path
    dovecot: DovecotServer
    smtp: SmtpServer

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "CME_MAILBOT_CONFIG"}
        env[PASSWORD_ENV] = self.dovecot.users["cme"]
        return env

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "cme_mailbot.cli", "--config", str(self.config), *args],
            capture_output=True, text=True, env=self.env(), timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    def start_run(self) -> subprocess.Popen[str]:
        log = (self.root / "run.log").open("a")
        return subprocess.Popen(
            [sys.executable, "-m", "cme_mailbot.cli", "--config", str(self.config), "run"],
            stdout=log, stderr=log, text=True, env=self.env(),
        )  # fmt: skip

    def deliver(self, raws: list[bytes]) -> None:
        client = self.dovecot.client()
        try:
            for raw in raws:
                client.append("INBOX", raw)
        finally:
            client.logout()

    def inbox_count(self) -> int:
        client = self.dovecot.client()
        try:
            return len(client.search("ALL"))
        finally:
            client.logout()

    def folder_count(self, folder: str) -> int:
        client = self.dovecot.client(select=None)
        try:
            name = folder.replace("/", ".")
            if not client.folder_exists(name):
                return 0
            client.select_folder(name, readonly=True)
            return len(client.search("NOT DELETED"))
        finally:
            client.logout()

    def messages(self) -> list[dict[str, Any]]:
        return list(json.loads(self.cli("messages", "list", "--json").stdout))

    def reply_ids(self) -> list[str]:
        """The Message-ID of every message the SMTP server accepted (duplicates kept)."""
        return [
            str(email.message_from_bytes(m.data)["Message-ID"]).strip() for m in self.smtp.messages
        ]


@pytest.fixture
def live_factory(
    tmp_path: Path,
    dovecot_factory: Callable[..., DovecotServer],
    smtp_factory: Callable[..., SmtpServer],
) -> Iterator[Callable[..., Live]]:
    procs: list[subprocess.Popen[str]] = []

    def make(
        interval: float = 2, workers: int = 2, parallel_from: int = 50, **dovecot_kw: Any
    ) -> Live:
        dovecot = dovecot_factory(**dovecot_kw)
        smtp = smtp_factory()
        root = tmp_path / "live"
        root.mkdir()
        config = root / "config.toml"
        config.write_text(
            CONFIG.format(
                root=root, imap_port=dovecot.port, smtp_port=smtp.port,
                password_env=PASSWORD_ENV, authserv=AUTHSERV_ID, interval=interval,
                workers=workers, parallel_from=parallel_from,
            ),
            encoding="utf-8",
        )  # fmt: skip
        live = Live(root, config, dovecot, smtp)
        live.cli("contacts", "add", SAMPLE_SENDER, "--school-urn", SAMPLE_URN,
                 "--school-name", SAMPLE_SCHOOL)  # fmt: skip
        original = live.start_run

        def tracked() -> subprocess.Popen[str]:
            proc = original()
            procs.append(proc)
            return proc

        live.start_run = tracked  # type: ignore[method-assign]
        return live

    yield make
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def referrals(n: int, today: dt.date, start: int = 1) -> list[bytes]:
    out = []
    for i in range(start, start + n):
        values = referral_values(
            today,
            upn=make_upn(serial=i % 1000, school=2000 + i // 1000),
            child_first_name=f"Kid{i}",
        )
        out.append(referral_email(subject=f"CME referral {i}",
                                  attachments=[("referral.pdf", fill_pdf(values))]))  # fmt: skip
    return out


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def assert_each_exactly_once(live: Live, n: int) -> None:
    messages = live.messages()
    assert len(messages) == n
    assert Counter(m["outcome"] for m in messages) == {"processed": n}
    assert len({m["message_id"] for m in messages}) == n
    ids = live.reply_ids()
    # Exactly one reply per message. A crash after the SMTP server accepted a reply but before
    # `sent` was committed re-sends the same reply (same Message-ID): never a different one.
    assert len(set(ids)) == n
    assert live.inbox_count() == 0
    assert live.folder_count("CME/Processed") == n


def test_sigkill_at_random_moments_while_draining_loses_and_doubles_nothing(
    live_factory: Callable[..., Live], today: dt.date
) -> None:
    live = live_factory()
    live.deliver(referrals(200, today))
    rng = random.Random(20261127)
    for _ in range(10):
        proc = live.start_run()
        time.sleep(rng.uniform(1.0, 3.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    proc = live.start_run()
    # The killed runs may have drained it all: let this one start before it is stopped.
    wait_until(lambda: catches_signal(proc.pid, signal.SIGTERM), timeout=60, what="run to start")
    wait_until(lambda: len(set(live.reply_ids())) >= 200 and live.inbox_count() == 0,
               timeout=240, what="the drain to finish")  # fmt: skip
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert_each_exactly_once(live, 200)
    resent = len(live.reply_ids()) - 200
    assert 0 <= resent <= 10  # at most one re-sent reply per kill


def _helpers_of(parent: int) -> list[int]:
    """Pids of helper processes started by `parent` (their command line names it)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--parent" in argv and argv[
            argv.index(b"--parent") + 1 : argv.index(b"--parent") + 2
        ] == [str(parent).encode()]:
            out.append(int(entry.name))
    return out


def test_a_backlog_shared_between_helper_processes_is_handled_exactly_once(
    live_factory: Callable[..., Live], today: dt.date
) -> None:
    live = live_factory(workers=3, parallel_from=10)
    live.deliver(referrals(45, today))
    proc = live.cli("poll", "--once")
    assert '"processes": 3' in proc.stderr and "backlog_shared" in proc.stderr
    # Each helper reports its own progress; the summary adds theirs to the parent's.
    assert "[1/3] message" in proc.stderr and "[2/3] message" in proc.stderr
    assert "45 new, 45 done (processed 45); replies sent 45" in proc.stdout
    assert_each_exactly_once(live, 45)
    assert len(live.reply_ids()) == 45


def test_helpers_stop_when_their_parent_is_killed_and_nothing_is_lost(
    live_factory: Callable[..., Live], today: dt.date
) -> None:
    live = live_factory(workers=2, parallel_from=10)
    live.deliver(referrals(80, today))
    proc = live.start_run()
    wait_until(lambda: bool(_helpers_of(proc.pid)), timeout=60, what="a helper to start")
    helpers = _helpers_of(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    # Told by the kernel (PR_SET_PDEATHSIG), each helper finishes its message and exits.
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in helpers),
               timeout=60, what="the helpers to stop")  # fmt: skip
    proc = live.start_run()
    wait_until(lambda: len(set(live.reply_ids())) >= 80 and live.inbox_count() == 0,
               timeout=240, what="the drain to finish")  # fmt: skip
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert_each_exactly_once(live, 80)
    assert len(live.reply_ids()) - 80 <= 1  # at most the parent's reply in hand, re-sent


def test_two_instances_on_one_mailbox_never_process_or_answer_twice(
    live_factory: Callable[..., Live], today: dt.date
) -> None:
    live = live_factory()
    live.deliver(referrals(60, today))
    first, second = live.start_run(), live.start_run()
    wait_until(lambda: len(live.reply_ids()) >= 60 and live.inbox_count() == 0,
               timeout=180, what="both instances to drain")  # fmt: skip
    for proc in (first, second):
        proc.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0 and second.wait(timeout=30) == 0
    assert_each_exactly_once(live, 60)
    assert len(live.reply_ids()) == 60  # no crash here: not even a re-sent copy


def test_dovecot_restarted_mid_run_the_bot_reconnects_and_carries_on(
    live_factory: Callable[..., Live], today: dt.date
) -> None:
    live = live_factory(interval=1)
    live.deliver(referrals(10, today))
    proc = live.start_run()
    wait_until(lambda: len(live.reply_ids()) >= 10, timeout=60, what="the first batch")
    live.dovecot.restart()
    live.deliver(referrals(10, today, start=11))
    wait_until(lambda: len(live.reply_ids()) >= 20 and live.inbox_count() == 0,
               timeout=90, what="the second batch after the restart")  # fmt: skip
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert_each_exactly_once(live, 20)


def test_smtp_down_for_a_while_replies_wait_then_all_go_out_once(
    live_factory: Callable[..., Live], today: dt.date
) -> None:
    live = live_factory()
    live.smtp.stop()
    live.deliver(referrals(5, today))
    out = live.cli("poll", "--once").stdout
    assert "5 done (processed 5)" in out and "waiting 5" in out
    assert live.inbox_count() == 0  # decided and filed; only the replies wait
    live.smtp.start()
    time.sleep(1.5)  # past the 1 s retry base configured for this test
    out = live.cli("poll", "--once").stdout
    assert "replies sent 5, waiting 0" in out
    assert_each_exactly_once(live, 5)
    assert len(live.reply_ids()) == 5


def test_permanent_smtp_failure_is_recorded_not_retried(
    live_factory: Callable[..., Live], today: dt.date
) -> None:
    live = live_factory()
    live.smtp.reply_with("554 5.7.1 relay denied")
    live.deliver(referrals(1, today))
    out = live.cli("poll", "--once").stdout
    assert "waiting 0" in out
    live.smtp.reply_with(None)
    time.sleep(1.5)
    live.cli("poll", "--once")
    assert live.smtp.messages == []


def test_server_without_move_files_with_copy_and_uid_expunge(
    live_factory: Callable[..., Live], today: dt.date
) -> None:
    live = live_factory(hide_move=True)
    live.deliver(referrals(3, today))
    live.deliver([referral_email(sender="x@stranger.example.org", subject="hello")])
    live.cli("poll", "--once")
    live.cli("poll", "--once")  # a second pass finds nothing to redo
    assert live.inbox_count() == 0
    assert live.folder_count("CME/Processed") == 3
    assert live.folder_count("CME/Rejected") == 1
    assert len(live.messages()) == 4
    assert len(live.reply_ids()) == 4
