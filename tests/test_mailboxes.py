"""Several mailboxes in one process ([[mailboxes]]), and `cme-mailbot health`."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cme_mailbot.forms.fill import fill_pdf
from cme_mailbot.mailbox.maildir import MaildirMailbox
from cme_mailbot.samples import referral_email, referral_values

from .servers import DovecotServer

TWO = """\
[database]
url = "sqlite:///{root}/cme.db"

[outbound]
backend = "outbox"
path = "{root}/outbox"
from_address = "cme@shared-service.example.gov.uk"

[sender_auth]
require = false

[poller]
interval_seconds = {interval}

[[mailboxes]]
name = "luton"
backend = "maildir"
path = "{root}/luton"
from_address = "cme@luton.example.gov.uk"
council_name = "Luton Borough Council"
mash_phone = "01582 111111"

[[mailboxes]]
name = "bedford"
backend = "maildir"
path = "{root}/bedford"
council_name = "Bedford Borough Council"
"""


def cli(config: Path, *args: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "cme_mailbot.cli", "--config", str(config), *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.fixture
def two(tmp_path: Path) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(TWO.format(root=tmp_path, interval=60), encoding="utf-8")
    return config


def test_each_mailbox_has_its_own_list_reply_address_and_folders(two: Path, tmp_path: Path) -> None:
    today = dt.date.today()
    school = "office@riverside.sch.example.uk"
    assert cli(two, "contacts", "add", school, "--school-urn", "109876", "--scope", "luton"
               ).returncode == 0  # fmt: skip
    raw = referral_email(attachments=[("f.pdf", fill_pdf(referral_values(today)))])
    MaildirMailbox(tmp_path / "luton").append(raw)
    MaildirMailbox(tmp_path / "bedford").append(raw.replace(b"Message-ID: <", b"Message-ID: <b"))

    out = cli(two, "poll", "--once")
    assert out.returncode == 0, out.stderr
    assert "luton: 1 new, 1 done (processed 1)" in out.stdout
    assert "bedford: 1 new, 1 done (unapproved_sender 1)" in out.stdout

    messages = json.loads(cli(two, "messages", "list", "--json").stdout)
    assert sorted(m["outcome"] for m in messages) == ["processed", "unapproved_sender"]
    import email
    from email import policy

    replies = [
        email.message_from_bytes(p.read_bytes(), policy=policy.default)
        for p in (tmp_path / "outbox").glob("*.eml")
    ]
    by_from = {str(m["From"]): m for m in replies}
    luton = next(m for f, m in by_from.items() if "cme@luton.example.gov.uk" in f)
    assert "Luton Borough Council" in luton.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert any("cme@shared-service.example.gov.uk" in f for f in by_from)
    assert MaildirMailbox(tmp_path / "luton").list_folder("CME/Processed")
    assert MaildirMailbox(tmp_path / "bedford").list_folder("CME/Rejected")

    listed = json.loads(cli(two, "contacts", "list", "--json", "--scope", "bedford").stdout)
    assert listed == []


def test_mailbox_and_mailboxes_together_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[mailbox]\npath = "x"\n[[mailboxes]]\nname = "a"\n'
                      "[sender_auth]\nrequire = false\n")  # fmt: skip
    proc = cli(config, "poll", "--once")
    assert proc.returncode == 2
    assert "either one [mailbox] or several [[mailboxes]]" in proc.stderr


def test_health_reports_never_polled_then_ok_then_stale(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(TWO.format(root=tmp_path, interval=0.2), encoding="utf-8")
    proc = cli(config, "health")
    assert proc.returncode == 1
    assert "luton: UNHEALTHY - never polled successfully" in proc.stdout
    cli(config, "poll", "--once")
    proc = cli(config, "health", "--max-missed", "1000")
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.splitlines() == ["luton: ok", "bedford: ok"]
    time.sleep(0.5)
    proc = cli(config, "health", "--max-missed", "1")
    assert proc.returncode == 1
    assert "last successful poll" in proc.stdout


@pytest.mark.dovecot
def test_health_fails_while_the_login_is_refused(
    tmp_path: Path, dovecot_factory: Callable[..., DovecotServer]
) -> None:
    server = dovecot_factory()
    config = tmp_path / "config.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path}/cme.db"\n'
        f'[mailbox]\nbackend = "imap"\nhost = "127.0.0.1"\nport = {server.port}\n'
        'security = "none"\nusername = "cme"\npassword_env = "CME_TEST_PW"\n'
        f'[outbound]\nbackend = "outbox"\npath = "{tmp_path}/outbox"\n'
        "[sender_auth]\nrequire = false\n",
        encoding="utf-8",
    )
    assert cli(config, "poll", "--once", env={"CME_TEST_PW": "secret"}).returncode == 0
    assert cli(config, "health").returncode == 0
    proc = cli(config, "poll", "--once", env={"CME_TEST_PW": "wrong-password"})
    assert proc.returncode == 1
    assert "wrong-password" not in proc.stdout + proc.stderr
    proc = cli(config, "health")
    assert proc.returncode == 1
    assert "login refused" in proc.stdout
