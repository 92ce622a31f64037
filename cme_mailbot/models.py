"""SQLModel tables: approved senders, the inbound-message ledger, referrals and the outbox.

Nothing here is SQLite-only: the same tables run on PostgreSQL. Timestamps are stored as UTC.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Column, DateTime, LargeBinary, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.types import JSON, TypeDecorator
from sqlmodel import Field, SQLModel

# Constraint names are part of the schema's history: migrations drop and alter them by name, and
# SQLite's batch migrations cannot drop an unnamed one. These are the names migration 0001 uses.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every database."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ts(**kw: Any) -> Any:
    return Field(sa_type=UTCDateTime, **kw)


class Outcome(enum.StrEnum):
    """Every inbound message ends with exactly one of these (behaviour.md)."""

    PROCESSED = "processed"
    UNAPPROVED_SENDER = "unapproved_sender"
    UNAUTHENTICATED_SENDER = "unauthenticated_sender"
    NO_FORM = "no_form"
    AUTO_REPLY_IGNORED = "auto_reply_ignored"
    QUARANTINED = "quarantined"


class MessageState(enum.StrEnum):
    """The ledger row moves forward only: claimed -> decided -> filed."""

    CLAIMED = "claimed"  # a poller holds a lease on it and is deciding
    DECIDED = "decided"  # outcome, records and replies committed; still to be filed
    FILED = "filed"  # moved to its outcome folder


class FormResultKind(enum.StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"


class OutboundState(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"  # permanent failure, shown to operators


def new_row(model: type[SQLModel], **values: Any) -> dict[str, Any]:
    """The column values a new `model` object would have, for a Core insert, without making the
    object: a table model's constructor sets every field through the ORM's instrumentation, which
    cost a third of a millisecond a row in the decision. Unnamed columns take the field's default
    (or its factory's value); an unset primary key is left to the database. An unknown name is
    a programming error (TypeError), as it would be for the constructor."""
    columns, defaults, factories = _row_plan(model)
    unknown = values.keys() - columns
    if unknown:
        raise TypeError(f"{model.__name__} has no column(s) {', '.join(sorted(unknown))}")
    row = {**defaults, **{k: f() for k, f in factories.items() if k not in values}, **values}
    for key in _primary_keys(model):
        if row.get(key) is None:
            row.pop(key, None)
    return row


@functools.cache
def _row_plan(
    model: type[SQLModel],
) -> tuple[frozenset[str], dict[str, Any], dict[str, Callable[[], Any]]]:
    table = model.__table__  # type: ignore[attr-defined]
    columns = frozenset(c.key for c in table.columns)
    defaults: dict[str, Any] = {}
    factories: dict[str, Callable[[], Any]] = {}
    for name, info in model.model_fields.items():
        if name not in columns:
            continue
        if info.default_factory is not None:
            factories[name] = info.default_factory  # type: ignore[assignment]
        elif not info.is_required():
            defaults[name] = info.default
    missing = columns - defaults.keys() - factories.keys()
    for name in missing:  # required fields: the caller names them (None if it does not)
        defaults[name] = None
    return columns, defaults, factories


@functools.cache
def _primary_keys(model: type[SQLModel]) -> tuple[str, ...]:
    return tuple(c.key for c in model.__table__.primary_key.columns)  # type: ignore[attr-defined]


def row_values(obj: SQLModel) -> dict[str, Any]:
    """A table model object's column values, for a Core insert (no ORM unit of work: it cost
    more than the rest of the decision). An unset primary key is left to the database."""
    table = type(obj).__table__  # type: ignore[attr-defined]
    values = {c.key: getattr(obj, c.key) for c in table.columns}
    for c in table.primary_key.columns:
        if values.get(c.key) is None:
            values.pop(c.key, None)
    return values


class ReferralStatus(enum.StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class School(SQLModel, table=True):
    urn: str = Field(primary_key=True, max_length=6)
    name: str = ""


class ApprovedContact(SQLModel, table=True):
    """An address allowed to refer, tied to one or more schools through ContactSchool.

    `scope` names the mailbox whose list it is on ("default" for the single [mailbox]; the
    `name` of a [[mailboxes]] entry for a shared service running several councils' mailboxes).
    """

    __table_args__ = (UniqueConstraint("scope", "email"),)

    id: int | None = Field(default=None, primary_key=True)
    scope: str = Field(default="default", index=True)
    email: str = Field(index=True)  # addr-spec, lower-cased
    created_at: datetime = _ts(default_factory=utcnow)


class ContactSchool(SQLModel, table=True):
    contact_id: int = Field(foreign_key="approvedcontact.id", primary_key=True)
    school_urn: str = Field(foreign_key="school.urn", primary_key=True)


class InboundMessage(SQLModel, table=True):
    """The ledger: one row per inbound message, keyed by where it sits in which mailbox."""

    __table_args__ = (UniqueConstraint("account", "folder", "location"),)

    id: int | None = Field(default=None, primary_key=True)
    account: str  # which mailbox (e.g. imap://user@host, maildir:/path)
    folder: str
    location: str  # "UIDVALIDITY:UID" on IMAP, the Maildir key on Maildir
    dedupe_key: str = Field(unique=True)  # normalised Message-ID, else sha256:<raw digest>
    message_id: str | None = Field(default=None, index=True)
    sha256: str = Field(index=True)
    size: int = 0
    sender: str | None = None  # From addr-spec as written (lower-cased)
    subject: str | None = None
    received_at: datetime = _ts(default_factory=utcnow)
    state: MessageState = MessageState.CLAIMED
    outcome: Outcome | None = Field(default=None, index=True)
    detail: str | None = None  # why (never child data), e.g. the quarantine reason
    attempts: int = 0
    claimed_by: str | None = None
    lease_until: datetime | None = _ts(default=None)
    decided_at: datetime | None = _ts(default=None)
    filed_at: datetime | None = _ts(default=None)
    filed_folder: str | None = None
    review: str | None = None  # for quarantined messages: "released" or "rejected" by a person
    reviewed_by: str | None = None
    reviewed_at: datetime | None = _ts(default=None)


class MessageBlob(SQLModel, table=True):
    """The original bytes of every inbound message, so any message can be re-read later."""

    inbound_id: int = Field(foreign_key="inboundmessage.id", primary_key=True)
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class FormResult(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    inbound_id: int = Field(foreign_key="inboundmessage.id", index=True)
    filename: str
    result: FormResultKind
    reference: str | None = None
    reasons: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    warnings: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)


class ReferenceCounter(SQLModel, table=True):
    """Per-year sequence behind references such as CME-2026-00042."""

    year: int = Field(primary_key=True)
    last: int = 0


class Referral(SQLModel, table=True):
    """One child's CME referral. Field columns are the form's field ids (rules/fields.toml)."""

    id: int | None = Field(default=None, primary_key=True)
    reference: str = Field(unique=True, index=True)
    status: ReferralStatus = Field(default=ReferralStatus.OPEN, index=True)
    source_message_id: str | None = None
    inbound_id: int = Field(foreign_key="inboundmessage.id", index=True)
    sibling_of: str | None = None  # the reference of the first sibling referred in the same email
    safeguarding_alert: bool = False
    created_at: datetime = _ts(default_factory=utcnow)
    closed_at: datetime | None = _ts(default=None)
    status_note: str | None = None
    child_first_name: str | None = None
    child_last_name: str | None = None
    child_other_names: str | None = None
    child_dob: date | None = Field(default=None, index=True)  # rule 9 looks up by these two
    child_gender: str | None = None
    upn: str | None = Field(default=None, index=True)
    year_group: str | None = None
    child_ethnicity: str | None = None
    child_first_language: str | None = None
    address_line1: str | None = None
    address_line2: str | None = None
    town: str | None = None
    postcode: str | None = None
    parent1_name: str | None = None
    parent1_relationship: str | None = None
    parent1_phone: str | None = None
    parent1_email: str | None = None
    parent2_name: str | None = None
    parent2_relationship: str | None = None
    parent2_phone: str | None = None
    parent2_email: str | None = None
    siblings: str | None = None
    school_name: str | None = None
    school_urn: str | None = None
    referrer_name: str | None = None
    referrer_role: str | None = None
    referrer_phone: str | None = None
    referrer_email: str | None = None
    referral_date: date | None = None
    date_last_attended: date | None = None
    reason: str | None = None
    leave_agreed_return_date: date | None = None
    enquiries_made: str | None = None
    enquiries_completed_date: date | None = None
    ewo_consulted: bool | None = None
    ewo_name: str | None = None
    destination_country: str | None = None
    destination_address: str | None = None
    destination_school: str | None = None
    electively_home_educated: bool | None = None
    in_admissions_process: bool | None = None
    sen_status: str | None = None
    social_care_status: str | None = None
    social_worker_name: str | None = None
    child_protection_concern: bool | None = None
    safeguarding_details: str | None = None


class OutboundEmail(SQLModel, table=True):
    """The transactional outbox: written with the decision, sent afterwards, exactly once."""

    id: int | None = Field(default=None, primary_key=True)
    inbound_id: int | None = Field(default=None, foreign_key="inboundmessage.id", index=True)
    kind: str  # "reply" or "safeguarding_alert"
    message_id: str = Field(unique=True)
    recipients: list[str] = Field(default_factory=list, sa_type=JSON)
    reply_to: str | None = Field(default=None, index=True)  # for replies: the one addressee
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    state: OutboundState = Field(default=OutboundState.PENDING, index=True)
    attempts: int = 0
    next_attempt_at: datetime = _ts(default_factory=utcnow)
    last_error: str | None = None
    created_at: datetime = _ts(default_factory=utcnow)
    sent_at: datetime | None = _ts(default=None)


class AuditEvent(SQLModel, table=True):
    """Every operator action: who, when, what, why."""

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _ts(default_factory=utcnow)
    actor: str
    action: str
    target: str
    detail: str = ""


class PollerStatus(SQLModel, table=True):
    """One row per mailbox: when it was last polled and the last error, for health checks."""

    account: str = Field(primary_key=True)
    last_success_at: datetime | None = _ts(default=None)
    last_error_at: datetime | None = _ts(default=None)
    last_error: str | None = None
    auth_failing: bool = False  # the last attempt was refused our credentials
    last_duration_seconds: float | None = None  # how long the last successful pass took
    last_backlog: int = 0  # messages found waiting at the start of the last pass
