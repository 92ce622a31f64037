"""The whole referral flow, end to end, through the real CLI over Maildir and the .eml outbox."""

from __future__ import annotations

import datetime as dt
import email
import email.utils
from collections.abc import Callable
from email.message import EmailMessage

import pytest

from cme_mailbot.forms.fill import fill_docx, fill_pdf
from cme_mailbot.samples import (
    SAMPLE_SENDER,
    make_upn,
    out_of_office,
    referral_email,
    referral_values,
)

from .conftest import Deployment

OFFICER = "cme-officer@council.example.gov.uk"
Text = Callable[[EmailMessage], str]


def pdf_email(today: dt.date, **overrides: str) -> bytes:
    return referral_email(
        attachments=[("referral.pdf", fill_pdf(referral_values(today, **overrides)))]
    )


def test_valid_pdf_form_is_accepted_recorded_answered_and_filed(
    deployment: Deployment, today: dt.date, text_of: Text
) -> None:
    raw = pdf_email(today)
    original_id = email.message_from_bytes(raw)["Message-ID"]
    deployment.deliver(raw)

    out = deployment.poll()
    assert "1 new, 1 done (processed 1)" in out.stdout

    [message] = deployment.messages()
    assert set(message) == {"message_id", "sender", "received_at", "outcome", "forms"}
    assert message["outcome"] == "processed"
    assert message["sender"] == SAMPLE_SENDER
    [form] = message["forms"]
    assert set(form) == {"filename", "result", "reference", "reasons"}
    assert form["result"] == "accepted"
    assert form["reference"].startswith(f"CME-{today.year}-")

    [referral] = deployment.referrals()
    assert referral["reference"] == form["reference"]
    assert referral["status"] == "open"
    assert referral["source_message_id"] == original_id
    assert referral["child_first_name"] == "Maya"
    assert referral["reason"] == "no_longer_at_address"
    assert referral["ewo_consulted"] is True
    assert referral["child_dob"] == dt.date(today.year - 9, 3, 14).isoformat()

    [reply] = deployment.sent()
    assert reply["To"] == SAMPLE_SENDER
    assert reply["In-Reply-To"].strip() == original_id
    assert original_id in reply["References"]
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["X-Auto-Response-Suppress"] == "All"
    assert reply["Subject"] == "Re: CME referral - referral accepted"
    assert form["reference"] in text_of(reply)
    assert reply.get_body(preferencelist=("html",)) is not None

    assert deployment.mailbox.list_folder("INBOX") == []
    assert (
        deployment.folder("CME/Processed") == [raw] or len(deployment.folder("CME/Processed")) == 1
    )


RULE_CASES = {
    "required": {"parent1_phone": ""},
    "value_format": {"postcode": "not a postcode"},
    "upn_check_letter": {"upn": ("B" if make_upn()[0] == "A" else "A") + make_upn()[1:]},
    "compulsory_school_age": {"child_dob": "01/01/2000"},
    "dates_not_future": {"enquiries_completed_date": "01/01/2099"},
    "last_attended_before_referral": {"date_last_attended": "{tomorrow_of_referral}"},
    "leave_return_passed": {
        "reason": "not_returned_from_leave",
        "leave_agreed_return_date": "{future}",
    },
    "not_cme_home_educated": {"electively_home_educated": "yes"},
    "not_cme_admissions": {"in_admissions_process": "yes"},
    "ewo_consulted": {"ewo_consulted": "no", "ewo_name": ""},
    "one_child": {"child_first_name": "Amy and Ben"},
    "school_urn_approved": {"school_urn": "123456"},
}


@pytest.mark.parametrize("rule_id", sorted(RULE_CASES))
def test_each_rule_rejects_with_its_message_in_the_reply(
    deployment: Deployment, today: dt.date, text_of: Text, rule_id: str
) -> None:
    referral_date = today - dt.timedelta(days=1)
    overrides = {
        k: v.format(
            tomorrow_of_referral=today.strftime("%d/%m/%Y"),
            future=(today + dt.timedelta(days=20)).strftime("%d/%m/%Y"),
        )
        for k, v in RULE_CASES[rule_id].items()
    }
    assert referral_date < today
    deployment.deliver(pdf_email(today, **overrides))
    deployment.poll()

    [message] = deployment.messages()
    assert message["outcome"] == "processed"
    [form] = message["forms"]
    assert form["result"] == "rejected"
    assert form["reference"] is None
    hits = [r for r in form["reasons"] if r["rule_id"] == rule_id]
    assert hits, form["reasons"]
    [reply] = deployment.sent()
    body = " ".join(text_of(reply).split())
    for hit in hits:
        assert " ".join(hit["message"].split()) in body
    assert "not accepted" in reply["Subject"]
    assert deployment.referrals() == []


def test_unapproved_sender_gets_a_polite_refusal(deployment: Deployment, today: dt.date,
                                                  text_of: Text) -> None:  # fmt: skip
    stranger = "head@unknown-school.example.org"
    deployment.deliver(
        referral_email(sender=stranger, attachments=[("f.pdf", fill_pdf(referral_values(today)))])
    )
    deployment.poll()
    [message] = deployment.messages()
    assert message["outcome"] == "unapproved_sender"
    [reply] = deployment.sent()
    assert reply["To"] == stranger
    assert "approved" in text_of(reply)
    assert deployment.referrals() == []
    assert len(deployment.folder("CME/Rejected")) == 1


def test_out_of_office_is_ignored_with_no_reply(deployment: Deployment) -> None:
    deployment.deliver(out_of_office())
    deployment.poll()
    [message] = deployment.messages()
    assert message["outcome"] == "auto_reply_ignored"
    assert deployment.sent() == []
    assert len(deployment.folder("CME/Rejected")) == 1


def test_same_message_delivered_twice_is_processed_once_and_answered_once(
    deployment: Deployment, today: dt.date
) -> None:
    raw = pdf_email(today)
    deployment.deliver(raw)
    deployment.poll()
    deployment.deliver(raw)  # re-delivered copy, same Message-ID
    deployment.poll()
    deployment.poll()
    assert len(deployment.messages()) == 1
    assert len(deployment.referrals()) == 1
    assert len(deployment.sent()) == 1
    assert deployment.mailbox.list_folder("INBOX") == []
    assert len(deployment.folder("CME/Processed")) == 2


def test_unauthenticated_sender_is_held_with_no_reply(deployment: Deployment,
                                                      today: dt.date) -> None:  # fmt: skip
    forged = referral_email(
        attachments=[("f.pdf", fill_pdf(referral_values(today)))],
        authserv_id="mx.attacker.example.net",
    )
    failing = referral_email(
        attachments=[("f.pdf", fill_pdf(referral_values(today)))], auth="dmarc=fail"
    )
    deployment.deliver(forged)
    deployment.deliver(failing)
    deployment.poll()
    assert [m["outcome"] for m in deployment.messages()] == ["unauthenticated_sender"] * 2
    assert deployment.sent() == []
    assert len(deployment.folder("CME/Quarantine")) == 2


def test_reply_goes_to_authenticated_sender_not_reply_to(deployment: Deployment,
                                                         today: dt.date) -> None:  # fmt: skip
    deployment.deliver(
        referral_email(
            attachments=[("f.pdf", fill_pdf(referral_values(today)))],
            extra_headers={"Reply-To": "collector@elsewhere.example.net"},
        )
    )
    deployment.poll()
    [reply] = deployment.sent()
    assert reply["To"] == SAMPLE_SENDER
    assert "elsewhere" not in str(reply)


def test_no_form_asks_for_the_completed_form(deployment: Deployment, text_of: Text) -> None:
    deployment.deliver(referral_email(subject="CME", attachments=[("note.txt", b"hello")]))
    deployment.poll()
    [message] = deployment.messages()
    assert message["outcome"] == "no_form"
    [reply] = deployment.sent()
    assert "attach the completed referral form" in " ".join(text_of(reply).split())


def test_siblings_become_separate_linked_referrals(deployment: Deployment,
                                                   today: dt.date) -> None:  # fmt: skip
    a = referral_values(today, child_first_name="Amir", upn=make_upn(serial=51))
    b = referral_values(
        today,
        child_first_name="Noor",
        upn=make_upn(serial=52),
        child_dob=dt.date(today.year - 11, 1, 20).strftime("%d/%m/%Y"),
    )
    deployment.deliver(
        referral_email(attachments=[("a.docx", fill_docx(a)), ("b.pdf", fill_pdf(b))])
    )
    deployment.poll()
    first, second = deployment.referrals()
    assert first["sibling_of"] is None
    assert second["sibling_of"] == first["reference"]
    assert len(deployment.sent()) == 1  # one reply listing both


def test_duplicate_quotes_the_existing_reference(deployment: Deployment, today: dt.date,
                                                 text_of: Text) -> None:  # fmt: skip
    deployment.deliver(pdf_email(today))
    deployment.poll()
    [first] = deployment.referrals()
    deployment.deliver(pdf_email(today, school_name="Riverside Primary"))  # new email, same child
    deployment.poll()
    second = deployment.messages()[1]
    [form] = second["forms"]
    assert form["result"] == "duplicate"
    assert form["reference"] == first["reference"]
    assert len(deployment.referrals()) == 1
    reply = deployment.sent()[-1]
    assert first["reference"] in text_of(reply)
    assert "already referred" in reply["Subject"]


def test_child_protection_concern_alerts_officers_and_points_school_to_mash(
    deployment: Deployment, today: dt.date, text_of: Text
) -> None:
    deployment.deliver(
        pdf_email(today, child_protection_concern="yes", safeguarding_details="Bruising seen.")
    )
    deployment.poll()
    [referral] = deployment.referrals()
    assert referral["safeguarding_alert"] is True
    alerts = deployment.replies_to(OFFICER)
    assert len(alerts) == 1
    assert referral["reference"] in alerts[0]["Subject"]
    assert "Maya" not in str(alerts[0]["Subject"])
    [reply] = deployment.replies_to(SAMPLE_SENDER)
    body = text_of(reply)
    assert "MUST ALSO be reported to the MASH" in body
    assert "01582 547653" in body
    assert "mash@council.example.gov.uk" in body


def test_no_child_name_or_upn_in_reply_subject(deployment: Deployment, today: dt.date) -> None:
    values = referral_values(today)
    subject = f"CME referral Maya Okafor {values['upn']}"
    deployment.deliver(referral_email(subject=subject, attachments=[("f.pdf", fill_pdf(values))]))
    deployment.poll()
    [reply] = deployment.sent()
    assert "Maya" not in reply["Subject"]
    assert "Okafor" not in reply["Subject"]
    assert values["upn"] not in reply["Subject"]
    assert reply["Subject"].startswith("Re: CME referral")


def test_corrupt_attachment_is_quarantined_and_acknowledged(deployment: Deployment,
                                                            text_of: Text) -> None:  # fmt: skip
    deployment.deliver(referral_email(attachments=[("form.pdf", b"%PDF-1.7\n garbage")]))
    deployment.poll()
    [message] = deployment.messages()
    assert message["outcome"] == "quarantined"
    [reply] = deployment.sent()
    assert "a person will review" in reply["Subject"]
    assert len(deployment.folder("CME/Quarantine")) == 1


def test_references_are_sequential_per_year(deployment: Deployment, today: dt.date) -> None:
    for serial in (61, 62, 63):
        deployment.deliver(
            pdf_email(today, upn=make_upn(serial=serial), child_first_name=f"Kid{serial}")
        )
    deployment.poll()
    refs = [r["reference"] for r in deployment.referrals()]
    assert refs == [f"CME-{today.year}-{n:05d}" for n in (1, 2, 3)]


def test_message_ids_of_replies_are_unique_and_dated(deployment: Deployment,
                                                     today: dt.date) -> None:  # fmt: skip
    deployment.deliver(pdf_email(today))
    deployment.deliver(out_of_office())
    deployment.deliver(referral_email(sender="x@y.example.org"))
    deployment.poll()
    ids = [m["Message-ID"] for m in deployment.sent()]
    assert len(ids) == len(set(ids)) == 2
    for m in deployment.sent():
        assert email.utils.parsedate_to_datetime(m["Date"]) is not None


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("CME referral", "CME referral"),
        ("CME Referral Form - Year 4", "CME Referral Form - Year 4"),
        ("URGENT: CME REFERRAL", "URGENT: CME REFERRAL"),
        ("CME referral Amy Smith", "your email"),
        ("CME referral AMY SMITH", "your email"),
        ("Referral for Amy Smith B801200005001", "your email"),
        ("Referral B801200005001", "Referral [redacted]"),
    ],
)
def test_reply_subject_never_echoes_a_name(subject: str, expected: str) -> None:
    from cme_mailbot.schema import default_schema
    from cme_mailbot.stages.decide import safe_subject

    assert safe_subject(subject, [], default_schema()) == expected


def test_reply_cap_stops_ping_pong_but_never_replies_about_forms(
    deployment: Deployment, today: dt.date
) -> None:
    with deployment.config.open("a") as fh:
        fh.write("\n[poller]\nreplies_per_sender_per_hour = 2\n")
    for i in range(4):  # a robot we did not recognise, writing again and again
        deployment.deliver(referral_email(subject=f"Re: your email {i}", body="Thank you"))
    for serial in range(70, 74):  # and a busy school
        deployment.deliver(
            pdf_email(today, upn=make_upn(serial=serial), child_first_name=f"Kid{serial}")
        )
    deployment.poll()
    outcomes = [m["outcome"] for m in deployment.messages()]
    assert outcomes == ["no_form"] * 4 + ["processed"] * 4
    subjects = [str(m["Subject"]) for m in deployment.sent()]
    assert sum("no referral form" in s for s in subjects) == 2
    assert sum("referral accepted" in s for s in subjects) == 4
