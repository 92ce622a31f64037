"""Decide stage: validate each form, store referrals and form results, and compose the emails.

Runs inside the one transaction that commits a message's decision, so the referral records, the
form results and the replies (the transactional outbox) are written together or not at all.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, func, insert, union_all
from sqlalchemy.engine import Connection
from sqlmodel import select

from cme_mailbot.config import Settings
from cme_mailbot.forms import ExtractedForm
from cme_mailbot.models import (
    FormResult,
    FormResultKind,
    OutboundEmail,
    Outcome,
    Referral,
    ReferralStatus,
    new_row,
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


_REFERRALS = Referral.__table__  # type: ignore[attr-defined]
_IS_OPEN = _REFERRALS.c.status == ReferralStatus.OPEN
_OPEN = select(_REFERRALS.c.reference).where(_IS_OPEN)
_BY_UPN = _REFERRALS.c.upn == bindparam("upn")
_BY_NAME = (
    (func.lower(_REFERRALS.c.child_first_name) == bindparam("first"))
    & (func.lower(_REFERRALS.c.child_last_name) == bindparam("last"))
    & (_REFERRALS.c.child_dob == bindparam("dob"))
)
# The form's own fields among the referral's columns (the rest are the record's bookkeeping).
_REFERRAL_FIELDS = frozenset(Referral.model_fields) - {
    "id", "reference", "status", "source_message_id", "inbound_id", "sibling_of",
    "safeguarding_alert", "created_at", "closed_at", "status_note",
}  # fmt: skip
_INSERT_REFERRAL = insert(_REFERRALS)
_INSERT_FORM_RESULT = insert(FormResult.__table__)  # type: ignore[attr-defined]
# Built once: this runs for every form, and building the statement cost more than running it.
# Either way of matching uses its own index (ix_referral_upn, ix_referral_child_dob); with both,
# a union of the two lookups, since an OR may lead a planner without statistics (SQLite) to
# scan every open referral instead.
_EITHER = union_all(
    select(_REFERRALS.c.reference, _REFERRALS.c.id).where(_IS_OPEN & _BY_UPN),
    select(_REFERRALS.c.reference, _REFERRALS.c.id).where(_IS_OPEN & _BY_NAME),
).subquery()
_FIND_OPEN = {
    (True, False): _OPEN.where(_BY_UPN).order_by(_REFERRALS.c.id).limit(1),
    (False, True): _OPEN.where(_BY_NAME).order_by(_REFERRALS.c.id).limit(1),
    (True, True): select(_EITHER.c.reference).order_by(_EITHER.c.id).limit(1),
}


def find_open_referral(conn: Connection, values: Mapping[str, object]) -> str | None:
    """Rule 9: an open referral for the same child (same UPN, or same name and date of birth).

    Sees referrals written earlier in the caller's transaction (siblings in one email)."""
    upn = values.get("upn")
    first, last, dob = (
        values.get("child_first_name"),
        values.get("child_last_name"),
        values.get("child_dob"),
    )
    by_upn = isinstance(upn, str) and bool(upn)
    by_name = isinstance(first, str) and isinstance(last, str) and isinstance(dob, dt.date)
    if not (by_upn or by_name):
        return None
    params: dict[str, object] = {"upn": upn}
    if by_name:
        assert isinstance(first, str) and isinstance(last, str)
        params.update(first=first.lower(), last=last.lower(), dob=dob)
    ref = conn.execute(_FIND_OPEN[(by_upn, by_name)], params).scalar()
    return None if ref is None else str(ref)


# Words a school's subject line may hold that are not a child's name.
_SUBJECT_WORDS = frozenset(
    """re fw fwd cme children child missing education referral referrals form forms new
    urgent school academy primary secondary infant junior nursery college high the of for and
    to from please find attached attachment siblings sibling pupil pupils year reception
    update updated resend resent correction corrected amended copy ref reference confidential
    official sensitive secure encrypted cm""".split()  # noqa: SIM905
)
_SUBJECT_PERSONAL = ("child_first_name", "child_last_name", "child_other_names", "upn")
_NAME_LIKE = re.compile(r"\b([A-Z][A-Za-z'’-]+)\s+(?=([A-Z][A-Za-z'’-]+)\b)")


def safe_subject(subject: str, forms: Sequence[ExtractedForm], schema: FormSchema) -> str:
    """The original subject with no child's name or UPN in it, for our reply's subject.

    Known values from the forms are taken out; then, since a subject may name a child we could
    not read (a damaged form, an unapproved sender), anything still shaped like a person's name
    makes us drop the subject altogether for a neutral one.
    """
    tokens: set[str] = set()
    for form in forms:
        for fid in _SUBJECT_PERSONAL:
            value = form.fields.get(fid, "").strip()
            tokens.update(t for t in [value, *value.split()] if len(t) >= 2)
    text = _redact_spans(subject, tokens)
    text = " ".join(UPN_PATTERN.sub(REDACTED, text).split())
    for match in _NAME_LIKE.finditer(text):
        if not {w.lower() for w in match.groups()} <= _SUBJECT_WORDS:
            return "your email"
    return text


def _places(text: str, token: str) -> Iterator[tuple[int, int]]:
    """(start, end) of every place `token` occurs in `text`, in any case. ASCII text and token
    are compared lower-cased (a pattern per token would be compiled afresh for every message:
    each child's name is new); anything else by a case-insensitive pattern, whose matching
    `str.lower` does not reproduce ("ı" and "I", "ſ" and "s", "ς" and "Σ" match each other)."""
    if not (text.isascii() and token.isascii()):
        for m in re.finditer(re.escape(token), text, flags=re.I):
            yield m.start(), m.end()
        return
    low, low_token = text.lower(), token.lower()
    at = low.find(low_token)
    while at != -1:
        yield at, at + len(token)
        at = low.find(low_token, at + 1)


def _redact_spans(text: str, tokens: set[str]) -> str:
    """Every place any token occurs (any case), overlapping places merged, each replaced once:
    no fragment of a name is left beside the marker, and no token matches inside the marker."""
    spans = sorted(span for token in tokens for span in _places(text, token))
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, at = [], 0
    for start, end in merged:
        out += [text[at:start], REDACTED]
        at = end
    return "".join([*out, text[at:]])


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
        message_id, raw = self.renderer.compose(
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
            message_id=message_id,
            recipients=list(to),
            reply_to=to[0] if kind == "reply" else None,
            raw=raw,  # CRLF line endings, as on the wire
        )


def child_display(values: Mapping[str, object], raw: Mapping[str, str]) -> str:
    """First name and last initial: enough for a school to match a reply line to a child."""
    first = str(values.get("child_first_name") or raw.get("child_first_name", "")).strip()
    last = str(values.get("child_last_name") or raw.get("child_last_name", "")).strip()
    if not first and not last:
        return "the child"
    return f"{first} {last[:1]}.".strip() if last else first


def decide_forms(
    conn: Connection,
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
        find_open_referral=lambda values: find_open_referral(conn, values),
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
            reference = next_reference(conn, today.year)
            referral = new_row(
                Referral,
                **{k: v for k, v in result.values.items() if k in _REFERRAL_FIELDS},
                reference=reference,
                source_message_id=source_message_id,
                inbound_id=inbound_id,
                sibling_of=first_reference,
                safeguarding_alert=result.safeguarding_alert,
            )
            # Written at once: later forms in this email see it (duplicates, siblings).
            conn.execute(_INSERT_REFERRAL, referral)
            first_reference = first_reference or reference
        row = new_row(
            FormResult,
            inbound_id=inbound_id,
            filename=form.filename,
            result=kind,
            reference=reference,
            reasons=[_reason(f) for f in result.failures],
            warnings=[_reason(w) for w in result.warnings],
        )
        conn.execute(_INSERT_FORM_RESULT, row)
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
