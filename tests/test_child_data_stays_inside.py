"""A sentinel child sent through the whole pipeline must appear in no log line or subject."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging

import structlog

from cme_mailbot.forms.fill import fill_docx, fill_pdf
from cme_mailbot.logging import configure_logging
from cme_mailbot.redact import forget_sensitive, remember_sensitive
from cme_mailbot.samples import make_upn, referral_email, referral_values

from .conftest import Deployment

FIRST, LAST = "Zephyrinaqx", "Quillbrookvw"
ADDRESS = "77 Sentinelqz Gardens"
UPN = make_upn(serial=987)
DOB_TEXT = "05/06/2016"


def sentinel_values(today: dt.date, **extra: str) -> dict[str, str]:
    fields = {
        "child_first_name": FIRST,
        "child_last_name": LAST,
        "address_line1": ADDRESS,
        "upn": UPN,
        "child_dob": DOB_TEXT,
        **extra,
    }
    return referral_values(today, **fields)


def test_sentinel_child_appears_in_no_log_output(deployment: Deployment, today: dt.date) -> None:
    subject = f"CME {FIRST} {LAST} {UPN}"
    name = f"{FIRST} {LAST}.pdf"
    emails = [
        # accepted, with a child protection concern (alert path)
        referral_email(subject=subject, attachments=[(name, fill_pdf(sentinel_values(
            today, child_protection_concern="yes", safeguarding_details=f"{FIRST} said")))]),
        # rejected by several rules
        referral_email(subject=subject, attachments=[(name, fill_docx(sentinel_values(
            today, ewo_consulted="no", postcode="nonsense", upn=UPN[:-1] + "Z")))]),
        # duplicate
        referral_email(subject=subject, attachments=[(name, fill_pdf(sentinel_values(today)))]),
        # failure paths: a corrupt form named after the child, and an unapproved sender
        referral_email(subject=subject, attachments=[(name, b"%PDF-1.4 broken " + FIRST.encode())]),
        referral_email(sender="x@stranger.example.org", subject=subject,
                       attachments=[(name, fill_pdf(sentinel_values(today)))]),
    ]  # fmt: skip
    for raw in emails:
        deployment.deliver(raw)
    out = deployment.poll()
    logs = out.stdout + out.stderr
    assert "decided" in logs  # the logs are there, at debug level, as JSON lines
    events = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    assert {e["event"] for e in events} >= {"decided", "safeguarding_alert_queued", "outbound"}
    for secret in (FIRST, LAST, ADDRESS, "Sentinelqz", UPN, DOB_TEXT):
        assert secret not in logs
    # Nor in anything an operator lists, or in any subject line we sent.
    messages = deployment.cli("messages", "list").stdout
    assert FIRST not in messages and UPN not in messages
    for msg in deployment.sent():
        for secret in (FIRST, LAST, UPN):
            assert secret not in str(msg["Subject"])


def test_processor_redacts_personal_keys_and_remembered_values() -> None:
    stream = io.StringIO()
    configure_logging("json", "debug", stream=stream)
    log = structlog.get_logger("t")
    remember_sensitive([FIRST, "14 Larch Close"])
    try:
        log.info("event", child_first_name="Amy", note=f"hello {FIRST}", where="14 larch close")
        logging.getLogger("some.library").warning("file %s.pdf unreadable", FIRST)
        log.info("upn", text=f"pupil {UPN}")
    finally:
        forget_sensitive()
    out = stream.getvalue()
    assert "Amy" not in out
    assert FIRST not in out
    assert "larch close" not in out.lower()
    assert UPN not in out
    assert out.count("[redacted]") >= 4
