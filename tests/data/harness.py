"""An in-process bot for the hostile and fuzz tests: the real Pipeline over a Maildir, an .eml
outbox and SQLite, with the sandboxed form reader, and the approved sample school."""

from __future__ import annotations

import email
from dataclasses import dataclass, field
from email import policy
from pathlib import Path
from typing import Any

from sqlmodel import Session

from cme_mailbot.config import (
    DatabaseSettings,
    LimitsSettings,
    MailboxSettings,
    OutboundSettings,
    SafeguardingSettings,
    SenderAuthSettings,
    Settings,
)
from cme_mailbot.contacts import add_contact
from cme_mailbot.db import session_scope
from cme_mailbot.mailbox.maildir import MaildirMailbox
from cme_mailbot.pipeline import Pipeline, PollSummary
from cme_mailbot.queries import message_dicts
from cme_mailbot.samples import AUTHSERV_ID, SAMPLE_SCHOOL, SAMPLE_SENDER, SAMPLE_URN
from cme_mailbot.stages.extract import FormReader
from cme_mailbot.transport.outbox import OutboxTransport
from cme_mailbot.wiring import open_database


def bot_settings(root: Path, limits: LimitsSettings | None = None) -> Settings:
    return Settings(
        database=DatabaseSettings(url=f"sqlite:///{root / 'cme.db'}"),
        mailbox=MailboxSettings(backend="maildir", path=root / "mailbox"),
        outbound=OutboundSettings(
            backend="outbox",
            path=root / "outbox",
            from_address="cme-referrals@council.example.gov.uk",
        ),
        sender_auth=SenderAuthSettings(require=True, trusted_authserv_ids=(AUTHSERV_ID,)),
        safeguarding=SafeguardingSettings(alert_to=("cme-officer@council.example.gov.uk",)),
        limits=limits or LimitsSettings(),
    )


@dataclass
class Bot:
    root: Path
    reader: FormReader
    settings: Settings = field(init=False)

    def __post_init__(self) -> None:
        self.settings = bot_settings(self.root)
        self.engine = open_database(self.settings)
        with session_scope(self.engine) as s:
            add_contact(s, SAMPLE_SENDER, SAMPLE_URN, SAMPLE_SCHOOL, actor="test")
        self.mailbox = MaildirMailbox(self.settings.mailbox.path, "INBOX")
        self.outbox = OutboxTransport(self.settings.outbound.path)
        self.pipeline = Pipeline(
            self.engine, self.settings, self.mailbox, self.outbox, form_reader=self.reader
        )

    def deliver(self, *raws: bytes) -> None:
        for raw in raws:
            self.mailbox.append(raw)

    def poll(self) -> PollSummary:
        return self.pipeline.poll_once()

    def messages(self) -> list[dict[str, Any]]:
        with Session(self.engine) as s:
            return message_dicts(s)

    def inbox(self) -> list[bytes]:
        return self.mailbox.list_folder("INBOX")

    def sent_to(self) -> list[str]:
        """The To address of every message written to the outbox."""
        out = []
        for path in sorted(self.settings.outbound.path.glob("*.eml")):
            msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
            out.append(str(msg["To"]))
        return out
