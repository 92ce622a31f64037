"""Shared fixtures: a scratch deployment (config file, SQLite, Maildir, .eml outbox) and helpers."""

from __future__ import annotations

import datetime as dt
import email
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from cme_mailbot.mailbox.maildir import MaildirMailbox
from cme_mailbot.samples import AUTHSERV_ID, SAMPLE_SCHOOL, SAMPLE_SENDER, SAMPLE_URN

# Real servers (Dovecot, SMTP) for any test that asks for them.
pytest_plugins = ["tests.servers", "tests.pg"]

CONFIG = """\
[database]
url = "{database_url}"

[mailbox]
backend = "maildir"
path = "{root}/mailbox"

[outbound]
backend = "outbox"
path = "{root}/outbox"
from_address = "cme-referrals@council.example.gov.uk"

[sender_auth]
require = true
trusted_authserv_ids = ["{authserv}"]

[safeguarding]
alert_to = ["cme-officer@council.example.gov.uk"]
mash_phone = "01582 547653"
mash_email = "mash@council.example.gov.uk"

[logging]
format = "json"
level = "debug"
"""


@dataclass
class Deployment:
    """A scratch cme-mailbot installation driven through the real CLI."""

    root: Path
    config: Path

    @property
    def mailbox(self) -> MaildirMailbox:
        return MaildirMailbox(self.root / "mailbox")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        env.pop("CME_MAILBOT_CONFIG", None)
        proc = subprocess.run(
            [sys.executable, "-m", "cme_mailbot.cli", "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"cme-mailbot {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def deliver(self, raw: bytes) -> None:
        self.mailbox.append(raw)

    def poll(self) -> subprocess.CompletedProcess[str]:
        return self.cli("poll", "--once")

    def messages(self) -> list[dict[str, Any]]:
        return list(json.loads(self.cli("messages", "list", "--json").stdout))

    def referrals(self) -> list[dict[str, Any]]:
        return list(json.loads(self.cli("referrals", "list", "--json").stdout))

    def sent(self) -> list[EmailMessage]:
        out = []
        for path in sorted((self.root / "outbox").glob("*.eml"), key=os.path.getmtime):
            msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
            assert isinstance(msg, EmailMessage)
            out.append(msg)
        return out

    def replies_to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.sent() if address in str(m["To"])]

    def folder(self, name: str) -> list[bytes]:
        return self.mailbox.list_folder(name)


@pytest.fixture
def deployment(tmp_path: Path, database_url: str) -> Deployment:
    """On SQLite, or on a fresh PostgreSQL database when CME_TEST_DATABASE=postgresql."""
    root = tmp_path / "cme"
    root.mkdir()
    config = root / "config.toml"
    text = CONFIG.format(root=root, authserv=AUTHSERV_ID, database_url=database_url)
    config.write_text(text, encoding="utf-8")
    d = Deployment(root, config)
    d.cli("contacts", "add", SAMPLE_SENDER, "--school-urn", SAMPLE_URN, "--school-name",
          SAMPLE_SCHOOL)  # fmt: skip
    return d


@pytest.fixture
def today() -> dt.date:
    return dt.date.today()


def body_text(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


@pytest.fixture
def text_of() -> Callable[[EmailMessage], str]:
    return body_text


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("CME_MAILBOT_CONFIG", raising=False)
    yield
