"""Helpers for the web console tests: a scratch deployment, users, mail through the real
pipeline, and a signed-in Starlette TestClient."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from cme_mailbot.config import (
    DatabaseSettings,
    LimitsSettings,
    MailboxSettings,
    OutboundSettings,
    SenderAuthSettings,
    Settings,
)
from cme_mailbot.contacts import add_contact
from cme_mailbot.db import session_scope
from cme_mailbot.forms.fill import fill_pdf
from cme_mailbot.mailbox.maildir import MaildirMailbox
from cme_mailbot.pipeline import Pipeline
from cme_mailbot.samples import (
    AUTHSERV_ID,
    SAMPLE_SCHOOL,
    SAMPLE_SENDER,
    SAMPLE_URN,
    make_upn,
    referral_email,
    referral_values,
)
from cme_mailbot.transport.outbox import OutboxTransport
from cme_mailbot.web import accounts
from cme_mailbot.web.models import Role, User
from cme_mailbot.wiring import open_database

PASSWORD = "correct horse battery staple"
ADMIN = "alice.admin"
OFFICER = "oscar.officer"
PASSWORD_HASH = accounts.hash_password(PASSWORD)  # argon2 is slow on purpose: hash once


@dataclass
class Site:
    root: Path
    settings: Settings
    engine: Engine

    def pipeline(self) -> Pipeline:
        return Pipeline(
            self.engine,
            self.settings,
            MaildirMailbox(self.settings.mailbox.path),
            OutboxTransport(self.settings.outbound.path),
        )

    def deliver(self, raw: bytes) -> None:
        MaildirMailbox(self.settings.mailbox.path).append(raw)

    def poll(self) -> None:
        self.pipeline().poll_once()

    def seed_referral(self, **overrides: str) -> None:
        """A valid PDF referral by email, through the real pipeline."""
        values = referral_values(dt.date.today(), **overrides)
        self.deliver(
            referral_email(
                subject="CME referral", attachments=[("cme-referral.pdf", fill_pdf(values))]
            )
        )
        self.poll()

    def seed_quarantined(self) -> None:
        """A corrupt PDF from an approved sender: quarantined."""
        self.deliver(
            referral_email(subject="Referral", attachments=[("form.pdf", b"%PDF-1.7 garbage")])
        )
        self.poll()

    def seed_unauthenticated(self) -> None:
        """A genuine-looking referral whose sender fails DMARC: held as unauthenticated."""
        values = referral_values(dt.date.today(), child_first_name="Ruby", upn=make_upn(serial=77))
        self.deliver(
            referral_email(
                subject="CME referral",
                auth="dmarc=fail",
                attachments=[("referral.pdf", fill_pdf(values))],
            )
        )
        self.poll()


def make_site(root: Path) -> Site:
    root.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        database=DatabaseSettings(url=f"sqlite:///{root / 'cme.db'}"),
        mailbox=MailboxSettings(backend="maildir", path=root / "mailbox"),
        outbound=OutboundSettings(
            backend="outbox", path=root / "outbox", from_address="cme@council.example.gov.uk"
        ),
        sender_auth=SenderAuthSettings(require=True, trusted_authserv_ids=(AUTHSERV_ID,)),
        # Form files are read in-process here: the sandboxed child costs time per form.
        limits=LimitsSettings(sandbox=False),
    )
    engine = open_database(settings)
    with session_scope(engine) as s:
        add_contact(s, SAMPLE_SENDER, SAMPLE_URN, SAMPLE_SCHOOL, actor="setup")
        s.add(User(username=ADMIN, role=Role.ADMINISTRATOR, password_hash=PASSWORD_HASH))
        s.add(User(username=OFFICER, role=Role.OFFICER, password_hash=PASSWORD_HASH))
    return Site(root, settings, engine)


_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_SIGN_IN = re.compile(r'name="sign_in_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def sign_in(client: TestClient, username: str, password: str = PASSWORD) -> TestClient:
    page = client.get("/sign-in")
    token = _SIGN_IN.search(page.text)
    assert token
    response = client.post(
        "/sign-in",
        data={"username": username, "password": password, "sign_in_token": token.group(1)},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return client


def attempt_sign_in(client: TestClient, username: str, password: str) -> int:
    page = client.get("/sign-in")
    token = _SIGN_IN.search(page.text)
    assert token
    return client.post(
        "/sign-in",
        data={"username": username, "password": password, "sign_in_token": token.group(1)},
        follow_redirects=False,
    ).status_code


class Clock:
    """A clock the tests move by hand."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)
