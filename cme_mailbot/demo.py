"""`cme-mailbot demo`: the whole flow on the embedded defaults, offline, in a scratch folder."""

from __future__ import annotations

import datetime as dt
import email
import shutil
from collections.abc import Callable
from email import policy
from pathlib import Path

from sqlmodel import Session

from cme_mailbot import queries
from cme_mailbot.config import (
    CouncilSettings,
    DatabaseSettings,
    MailboxSettings,
    OutboundSettings,
    SafeguardingSettings,
    SenderAuthSettings,
    Settings,
)
from cme_mailbot.contacts import add_contact
from cme_mailbot.db import session_scope
from cme_mailbot.forms.fill import fill_docx, fill_pdf
from cme_mailbot.mailbox.maildir import MaildirMailbox
from cme_mailbot.pipeline import Pipeline
from cme_mailbot.samples import (
    SAMPLE_SCHOOL,
    SAMPLE_SENDER,
    SAMPLE_URN,
    make_upn,
    out_of_office,
    referral_email,
    referral_values,
)
from cme_mailbot.transport.outbox import OutboxTransport
from cme_mailbot.wiring import open_database


def demo_settings(directory: Path) -> Settings:
    return Settings(
        database=DatabaseSettings(url=f"sqlite:///{directory / 'cme-mailbot.db'}"),
        mailbox=MailboxSettings(backend="maildir", path=directory / "mailbox"),
        outbound=OutboundSettings(
            backend="outbox",
            path=directory / "outbox",
            from_address="cme-referrals@council.example.gov.uk",
        ),
        # The embedded demo has no border MTA stamping Authentication-Results.
        sender_auth=SenderAuthSettings(require=False),
        council=CouncilSettings(name="Example Borough Council", team_phone="01582 555000"),
        safeguarding=SafeguardingSettings(
            alert_to=("cme-officer@council.example.gov.uk",),
            mash_phone="01582 547653",
            mash_email="mash@council.example.gov.uk",
        ),
    )


def seed(mailbox: MaildirMailbox, today: dt.date) -> list[str]:
    """A realistic handful of emails; returns what each one is, in delivery order."""
    good = referral_values(today)
    failing = referral_values(
        today,
        child_first_name="Leo",
        child_last_name="Brennan",
        upn=make_upn(serial=42),
        reason="no_longer_at_address",
        ewo_consulted="no",
        ewo_name="",
        child_dob="31/02/2016",
    )
    sibling_a = referral_values(
        today,
        child_first_name="Amir",
        child_last_name="Haddad",
        upn=make_upn(serial=51),
        child_dob=dt.date(today.year - 7, 9, 2).strftime("%d/%m/%Y"),
        reason="moved_abroad",
        destination_country="Lebanon",
        siblings="Noor Haddad",
        child_protection_concern="yes",
        safeguarding_details="Concerns raised by class teacher before the family left.",
    )
    sibling_b = referral_values(
        today,
        child_first_name="Noor",
        child_last_name="Haddad",
        upn=make_upn(serial=52),
        child_dob=dt.date(today.year - 10, 1, 20).strftime("%d/%m/%Y"),
        reason="moved_abroad",
        destination_country="Lebanon",
        siblings="Amir Haddad",
    )
    emails = [
        ("valid PDF form", referral_email(
            subject="CME referral", attachments=[("cme-referral.pdf", fill_pdf(good))])),
        ("form failing rules", referral_email(
            subject="Referral", attachments=[("referral-form.pdf", fill_pdf(failing))])),
        ("two siblings, Word forms, child protection concern", referral_email(
            subject="CME referrals - siblings",
            attachments=[("sibling-1.docx", fill_docx(sibling_a)),
                         ("sibling-2.docx", fill_docx(sibling_b))])),
        ("unapproved sender", referral_email(
            sender="head@unknown-school.example.org", subject="Child missing",
            attachments=[("form.pdf", fill_pdf(good))])),
        ("out-of-office", out_of_office()),
        ("no form attached", referral_email(subject="CME", body="See attached.")),
    ]  # fmt: skip
    for _what, raw in emails:
        mailbox.append(raw)
    return [what for what, _raw in emails]


def run_demo(directory: Path, echo: Callable[[str], None] = print) -> None:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    settings = demo_settings(directory)
    engine = open_database(settings)
    with session_scope(engine) as s:
        add_contact(s, SAMPLE_SENDER, SAMPLE_URN, SAMPLE_SCHOOL, actor="demo")
    mailbox = MaildirMailbox(settings.mailbox.path, "INBOX")
    today = dt.date.today()
    labels = seed(mailbox, today)
    outbox = OutboxTransport(settings.outbound.path)
    summary = Pipeline(engine, settings, mailbox, outbox).poll_once()

    echo(f"cme-mailbot demo in {directory}/")
    echo(f"approved contact: {SAMPLE_SENDER} (URN {SAMPLE_URN}, {SAMPLE_SCHOOL})\n")
    with Session(engine) as s:
        rows = queries.message_dicts(s)
    echo(f"{'#':<3} {'email':<52} {'outcome':<20} forms")
    for label, row in zip(labels, rows, strict=False):
        forms = "; ".join(
            f"{f['result']} {f['reference'] or ''}".strip()
            + (f" ({', '.join(r['rule_id'] for r in f['reasons'])})" if f["reasons"] else "")
            for f in row["forms"]
        )
        echo(f"{row['id']:<3} {label:<52} {row['outcome']:<20} {forms}")
    echo("")
    echo(f"summary: {summary.line()}")
    echo(f"replies and alerts written to {settings.outbound.path}/:")
    for path in sorted(settings.outbound.path.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns):
        msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        echo(f"  {path.name}  to {msg['To']}: {msg['Subject']}")
    echo(f"\nmessages filed under {settings.mailbox.path}/ (.CME.Processed, .CME.Rejected, ...)")
    echo(f"try: cme-mailbot --config {directory}/config.toml referrals list")
    (directory / "config.toml").write_text(
        "# Written by `cme-mailbot demo`: the demo's own settings.\n"
        f'[database]\nurl = "{settings.database.url}"\n\n'
        f'[mailbox]\nbackend = "maildir"\npath = "{settings.mailbox.path}"\n\n'
        f'[outbound]\nbackend = "outbox"\npath = "{settings.outbound.path}"\n'
        f'from_address = "{settings.outbound.from_address}"\n\n'
        "[sender_auth]\nrequire = false\n",
        encoding="utf-8",
    )
