"""Decide stage: validate each form, store referrals and form results, and compose the emails.

Runs inside the one transaction that commits a message's decision, so the referral records, the
form results and the replies (the transactional outbox) are written together or not at all.
"""

from __future__ import annotations

import datetime as dt
import email.policy
import email.utils
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from sqlalchemy import func, or_
from sqlmodel import Session, col, select

from cme_mailbot.config import Settings
from cme_mailbot.forms import ExtractedForm
from cme_mailbot.models import (
    FormResult,
    FormResultKind,
    OutboundEmail,
    Outcome,
    Referral,
    ReferralStatus,
)
from cme_mailbot.redact import REDACTED, UPN_PATTERN
from cme_mailbot.references import next_reference
from cme_mailbot.render import Renderer, Threading
from cme_mailbot.schema import FormSchema
from cme_mailbot.validation import RuleBook, ValidationContext, ValidationResult


@dataclass
class FormOutcome:
    form: ExtractedForm
    result: ValidationResult
    kind: FormResultKind
    reference: str | None = None


@dataclass
class Decided:
    """What the decision transaction wrote, for logging and the summary."""

    forms: list[FormOutcome] = field(default_factory=list)
    emails: list[OutboundEmail] = field(default_factory=list)


def find_open_referral(session: Session, values: Mapping[str, object]) -> str | None:
    """Rule 9: an open referral for the same child (same UPN, or same name and date of birth)."""
    conditions = []
    upn = values.get("upn")
    if isinstance(upn, str) and upn:
        conditions.append(col(Referral.upn) == upn)
    first, last, dob = (
        values.get("child_first_name"),
        values.get("child_last_name"),
        values.get("child_dob"),
    )
    if isinstance(first, str) and isinstance(last, str) and isinstance(dob, dt.date):
        conditions.append(
            (func.lower(col(Referral.child_first_name)) == first.lower())
            & (func.lower(col(Referral.child_last_name)) == last.lower())
            & (col(Referral.child_dob) == dob)
        )
    if not conditions:
        return None
    ref = session.exec(
        select(Referral.reference)
        .where(Referral.status == ReferralStatus.OPEN)
        .where(or_(*conditions))
        .order_by(col(Referral.id))
    ).first()
    return ref


# Words a school's subject line may hold that are not a child's name.
_SUBJECT_WORDS = frozenset(
    """re fw fwd cme children child missing education referral referrals form forms new
    urgent school academy primary secondary infant junior nursery college high the of for and
    to from please find attached attachment siblings sibling pupil pupils year reception
    update updated resend resent correction corrected amended copy ref reference confidential
    official sensitive secure encrypted cm""".split()  # noqa: SIM905
)
_NAME_LIKE = re.compile(r"\b([A-Z][A-Za-z'’-]+)\s+(?=([A-Z][A-Za-z'’-]+)\b)")


def safe_subject(subject: str, forms: Sequence[ExtractedForm], schema: FormSchema) -> str:
    """The original subject with no child's name or UPN in it, for our reply's subject.

    Known values from the forms are taken out; then, since a subject may name a child we could
    not read (a damaged form, an unapproved sender), anything still shaped like a person's name
    makes us drop the subject altogether for a neutral one.
    """
    personal = {"child_first_name", "child_last_name", "child_other_names", "upn"}
    text = subject
    for form in forms:
        for fid in personal:
            value = form.fields.get(fid, "").strip()
            for token in [value, *value.split()]:
                if len(token) >= 2:
                    text = re.sub(re.escape(token), REDACTED, text, flags=re.I)
    text = " ".join(UPN_PATTERN.sub(REDACTED, text).split())
    for match in _NAME_LIKE.finditer(text):
        if not {w.lower() for w in match.groups()} <= _SUBJECT_WORDS:
            return "your email"
    return text


def reply_subject_base(subject: str) -> str:
    base = subject.strip()
    while base.lower().startswith(("re:", "re :")):
        base = base.split(":", 1)[1].strip()
    return base or "your email"


class Composer:
    """Builds outbound emails into the transactional outbox."""

    def __init__(self, settings: Settings, renderer: Renderer):
        self.settings = settings
        self.renderer = renderer

    def common(self) -> dict[str, Any]:
        c = self.settings.council
        sg = self.settings.safeguarding
        return {
            "council": c.name,
            "team": c.team_name,
            "team_phone": c.team_phone,
            "team_email": self.settings.outbound.from_address,
            "mash_phone": sg.mash_phone,
            "mash_email": sg.mash_email,
            "contacts_help": c.contacts_help,
        }

    def outbound(
        self,
        template: str,
        context: Mapping[str, Any],
        to: Sequence[str],
        kind: str,
        inbound_id: int | None,
        thread: Threading | None,
    ) -> OutboundEmail:
        ob = self.settings.outbound
        msg: EmailMessage = self.renderer.build(
            template,
            {**self.common(), **context},
            from_address=ob.from_address,
            from_name=ob.from_name,
            to=to,
            thread=thread,
        )
        return OutboundEmail(
            inbound_id=inbound_id,
            kind=kind,
            message_id=str(msg["Message-ID"]),
            recipients=list(to),
            reply_to=to[0] if kind == "reply" else None,
            raw=msg.as_bytes(policy=email.policy.SMTP),  # CRLF line endings, as on the wire
        )


def child_display(values: Mapping[str, object], raw: Mapping[str, str]) -> str:
    """First name and last initial: enough for a school to match a reply line to a child."""
    first = str(values.get("child_first_name") or raw.get("child_first_name", "")).strip()
    last = str(values.get("child_last_name") or raw.get("child_last_name", "")).strip()
    if not first and not last:
        return "the child"
    return f"{first} {last[:1]}.".strip() if last else first


def decide_forms(
    session: Session,
    *,
    inbound_id: int,
    source_message_id: str | None,
    forms: Sequence[ExtractedForm],
    sender_urns: frozenset[str],
    rulebook: RuleBook,
    settings: Settings,
    today: dt.date,
) -> list[FormOutcome]:
    """Validate every form and write referrals and form results. Siblings are linked."""
    contacts = {
        "ehe_contact": settings.council.ehe_contact,
        "admissions_contact": settings.council.admissions_contact,
        "mash_phone": settings.safeguarding.mash_phone,
        "mash_email": settings.safeguarding.mash_email,
    }
    ctx = ValidationContext(
        today=today,
        sender_urns=sender_urns,
        find_open_referral=lambda values: find_open_referral(session, values),
        contacts=contacts,
    )
    outcomes: list[FormOutcome] = []
    first_reference: str | None = None
    for form in forms:
        result = rulebook.validate(form.fields, ctx)
        if result.failures:
            kind, reference = FormResultKind.REJECTED, None
        elif result.duplicate_of:
            kind, reference = FormResultKind.DUPLICATE, result.duplicate_of
        else:
            kind = FormResultKind.ACCEPTED
            reference = next_reference(session, today.year)
            referral = Referral(
                reference=reference,
                source_message_id=source_message_id,
                inbound_id=inbound_id,
                sibling_of=first_reference,
                safeguarding_alert=result.safeguarding_alert,
            )
            for key, value in result.values.items():
                if key in Referral.model_fields:
                    setattr(referral, key, value)
            session.add(referral)
            session.flush()  # later forms in this email see it (duplicates, siblings)
            first_reference = first_reference or reference
        session.add(
            FormResult(
                inbound_id=inbound_id,
                filename=form.filename,
                result=kind,
                reference=reference,
                reasons=[_reason(f) for f in result.failures],
                warnings=[_reason(w) for w in result.warnings],
            )
        )
        outcomes.append(FormOutcome(form, result, kind, reference))
    return outcomes


def _reason(failure: Any) -> dict[str, Any]:
    return {
        "rule_id": failure.rule_id,
        "message": failure.message,
        "source": failure.source,
        "fields": list(failure.fields),
    }


def reply_forms_context(outcomes: Sequence[FormOutcome]) -> list[dict[str, Any]]:
    return [
        {
            "filename": o.form.filename,
            "result": o.kind.value,
            "reference": o.reference,
            "child": child_display(o.result.values, o.form.fields),
            "reasons": [f.message for f in o.result.failures],
            "duplicate_of": o.result.duplicate_of,
            "safeguarding": o.result.safeguarding_alert,
        }
        for o in outcomes
    ]


def outcome_template(outcome: Outcome) -> str | None:
    """Which reply an outcome gets (behaviour.md); None means no reply, ever."""
    return {
        Outcome.PROCESSED: "reply_processed",
        Outcome.UNAPPROVED_SENDER: "reply_unapproved_sender",
        Outcome.NO_FORM: "reply_no_form",
        Outcome.QUARANTINED: "reply_quarantined",
    }.get(outcome)
