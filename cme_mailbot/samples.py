"""Realistic sample referrals and emails: for the demo, the tests and the benchmark.

Every child here is invented. UPNs carry a correct DfE check letter.
"""

from __future__ import annotations

import datetime as dt
import email.utils
from collections.abc import Mapping, Sequence
from email.message import EmailMessage

from stdnum.gb import upn as upn_mod

SAMPLE_URN = "109876"
SAMPLE_SCHOOL = "Riverside Primary School"
SAMPLE_SENDER = "office@riverside.sch.example.uk"
AUTHSERV_ID = "mx.council.example.gov.uk"


def make_upn(la: int = 821, school: int = 2001, year: int = 15, serial: int = 1) -> str:
    body = f"{la:03d}{school:04d}{year:02d}{serial:03d}"
    return str(upn_mod.calc_check_digit(body)) + body


def referral_values(today: dt.date | None = None, **overrides: str) -> dict[str, str]:
    """A complete, valid form for an invented 9-year-old who moved with no forwarding address."""
    today = today or dt.date.today()
    dob = dt.date(today.year - 9, 3, 14)
    values = {
        "child_first_name": "Maya",
        "child_last_name": "Okafor",
        "child_other_names": "",
        "child_dob": dob.strftime("%d/%m/%Y"),
        "child_gender": "female",
        "upn": make_upn(serial=17),
        "year_group": "year_4",
        "child_ethnicity": "Black British - African",
        "child_first_language": "English",
        "address_line1": "14 Larch Close",
        "address_line2": "",
        "town": "Luton",
        "postcode": "LU2 7QX",
        "parent1_name": "Grace Okafor",
        "parent1_relationship": "Mother",
        "parent1_phone": "07911 123456",
        "parent1_email": "grace.okafor@example.com",
        "siblings": "",
        "school_name": SAMPLE_SCHOOL,
        "school_urn": SAMPLE_URN,
        "referrer_name": "Helen Marsh",
        "referrer_role": "Attendance Officer",
        "referrer_phone": "01582 555010",
        "referrer_email": SAMPLE_SENDER,
        "referral_date": (today - dt.timedelta(days=1)).strftime("%d/%m/%Y"),
        "date_last_attended": (today - dt.timedelta(days=30)).strftime("%d/%m/%Y"),
        "reason": "no_longer_at_address",
        "enquiries_made": (
            "Home visit by EWO (no answer, neighbours say family moved out); calls to both "
            "numbers unanswered; checked with siblings' school and the GP surgery."
        ),
        "enquiries_completed_date": (today - dt.timedelta(days=2)).strftime("%d/%m/%Y"),
        "ewo_consulted": "yes",
        "ewo_name": "Sam Patel",
        "electively_home_educated": "no",
        "in_admissions_process": "no",
        "sen_status": "none",
        "social_care_status": "none",
        "child_protection_concern": "no",
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v != ""}


def referral_email(
    *,
    sender: str = SAMPLE_SENDER,
    sender_name: str = "Riverside Primary School Office",
    subject: str = "CME referral",
    body: str = "Please find attached a CME referral form.",
    attachments: Sequence[tuple[str, bytes]] = (),
    auth: str | None = "dmarc=pass",
    authserv_id: str = AUTHSERV_ID,
    message_id: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
    to: str = "cme-referrals@council.example.gov.uk",
) -> bytes:
    """An inbound email as the council's border MTA would deliver it."""
    msg = EmailMessage()
    if auth is not None:
        domain = sender.rsplit("@", 1)[-1]
        msg["Authentication-Results"] = (
            f"{authserv_id}; spf=pass smtp.mailfrom={domain}; {auth} header.from={domain}"
        )
    msg["From"] = email.utils.formataddr((sender_name, sender))
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate()
    msg["Message-ID"] = message_id or email.utils.make_msgid(domain=sender.rsplit("@", 1)[-1])
    for k, v in (extra_headers or {}).items():
        msg[k] = v
    msg.set_content(body)
    for filename, data in attachments:
        if filename.lower().endswith(".pdf"):
            maintype, subtype = "application", "pdf"
        elif filename.lower().endswith(".docx"):
            maintype, subtype = (
                "application",
                "vnd.openxmlformats-officedocument.wordprocessingml.document",
            )
        else:
            maintype, subtype = "application", "octet-stream"
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return bytes(msg)


def out_of_office(sender: str = SAMPLE_SENDER) -> bytes:
    return referral_email(
        sender=sender,
        subject="Automatic reply: CME referral",
        body="I am out of the office until Monday.",
        extra_headers={"Auto-Submitted": "auto-replied", "X-Auto-Response-Suppress": "All"},
    )
