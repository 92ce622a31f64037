"""The published forms, filled in and emailed back, are accepted with every value intact."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from cme_mailbot.forms.fill import fill_docx, fill_pdf, handmade_docx
from cme_mailbot.samples import make_upn, referral_email, referral_values
from cme_mailbot.schema import default_schema
from cme_mailbot.validation.values import parse_value

from .conftest import Deployment


def every_field(today: dt.date) -> dict[str, str]:
    """A referral with every one of the schema's fields filled, as a school would type it."""
    return referral_values(
        today,
        child_other_names="Mimi",
        child_ethnicity="Black British - African",
        address_line2="Stopsley",
        parent2_name="Daniel Okafor",
        parent2_relationship="Father",
        parent2_phone="020 7946 0018",
        parent2_email="D.Okafor@Example.com",
        siblings="None known",
        reason="not_returned_from_leave",
        leave_agreed_return_date=(today - dt.timedelta(days=10)).strftime("%d/%m/%Y"),
        destination_country="Nigeria",
        destination_address="Unknown, believed Lagos",
        destination_school="Not known",
        sen_status="sen_support",
        social_care_status="previously_known",
        social_worker_name="Pat Jones",
        child_protection_concern="no",
    )


def expected(values: dict[str, str], today: dt.date) -> dict[str, object]:
    schema = default_schema()
    out: dict[str, object] = {}
    for fid, text in values.items():
        value = parse_value(schema[fid], text, today=today)
        out[fid] = value.isoformat() if isinstance(value, dt.date) else value
    return out


@pytest.mark.parametrize("fmt", ["pdf", "docx", "handmade"])
def test_exported_form_filled_and_emailed_back_keeps_every_value(
    deployment: Deployment, tmp_path: Path, today: dt.date, fmt: str
) -> None:
    values = every_field(today)
    assert set(values) == set(default_schema().ids) - {"safeguarding_details"}
    exported = deployment.cli("forms", "export", str(tmp_path / "forms")).stdout.split()
    pdf = next(Path(p) for p in exported if p.endswith(".pdf"))
    docx = next(Path(p) for p in exported if p.endswith(".docx"))
    if fmt == "pdf":
        attachment = ("referral.pdf", fill_pdf(values, template=pdf.read_bytes()))
    elif fmt == "docx":
        attachment = ("referral.docx", fill_docx(values, template=docx.read_bytes()))
    else:  # a council's own Word table, typed into by hand with the printed labels
        schema = default_schema()
        rows = [(schema[fid].label + ":", text) for fid, text in values.items()]
        attachment = ("referral.docx", handmade_docx(rows))
    deployment.deliver(referral_email(attachments=[attachment]))
    deployment.poll()

    [message] = deployment.messages()
    [form] = message["forms"]
    assert form["result"] == "accepted", form["reasons"]
    record = json.loads(deployment.cli("referrals", "show", form["reference"], "--json").stdout)
    want = expected(values, today)
    got = {fid: record[fid] for fid in want}
    assert got == want
    for fid in set(default_schema().ids) - set(want):
        assert record[fid] is None


def test_upn_from_another_la_is_still_accepted(deployment: Deployment, today: dt.date) -> None:
    deployment.deliver(
        referral_email(
            attachments=[("f.pdf", fill_pdf(referral_values(today, upn=make_upn(la=999))))]
        )
    )
    deployment.poll()
    [form] = deployment.messages()[0]["forms"]
    assert form["result"] == "accepted"  # an unknown LA code is a warning, not a rejection
