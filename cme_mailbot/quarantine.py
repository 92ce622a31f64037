"""The quarantine a person works: list, show, release (process again) and reject.

Every action is recorded in the audit table: who, when, what, why.
"""

from __future__ import annotations

import email.policy
from dataclasses import dataclass
from email.parser import BytesParser
from typing import Any

from sqlmodel import Session, col, select

from cme_mailbot.models import AuditEvent, InboundMessage, MessageBlob, MessageState, utcnow
from cme_mailbot.pipeline import QUARANTINE_OUTCOMES, Pipeline, ReleaseError


class QuarantineError(ValueError):
    """Bad request about a quarantined message; one line."""


@dataclass(frozen=True)
class AttachmentInfo:
    index: int
    filename: str
    content_type: str
    size: int


def pending(session: Session) -> list[InboundMessage]:
    """Quarantined messages that no person has released or rejected yet, oldest first."""
    return list(
        session.exec(
            select(InboundMessage)
            .where(col(InboundMessage.outcome).in_(QUARANTINE_OUTCOMES))
            .where(col(InboundMessage.review).is_(None))
            .where(InboundMessage.state == MessageState.FILED)
            .order_by(col(InboundMessage.id))
        ).all()
    )


def get(session: Session, message_id: int) -> InboundMessage:
    row = session.get(InboundMessage, message_id)
    if row is None or row.outcome not in QUARANTINE_OUTCOMES:
        raise QuarantineError(f"no quarantined message #{message_id}")
    return row


def attachments(session: Session, message_id: int) -> list[AttachmentInfo]:
    """The attachments of the stored original, without parsing any of them."""
    blob = session.get(MessageBlob, message_id)
    if blob is None:
        return []
    msg = BytesParser(policy=email.policy.default).parsebytes(blob.raw)
    out = []
    for i, part in enumerate(msg.iter_attachments()):
        payload = part.get_payload(decode=True)
        size = len(payload) if isinstance(payload, bytes) else 0
        out.append(
            AttachmentInfo(
                i, part.get_filename() or f"attachment-{i}", part.get_content_type(), size
            )
        )
    return out


def attachment_bytes(session: Session, message_id: int, index: int) -> tuple[str, str, bytes]:
    blob = session.get(MessageBlob, message_id)
    if blob is None:
        raise QuarantineError(f"message #{message_id} has no stored original")
    msg = BytesParser(policy=email.policy.default).parsebytes(blob.raw)
    for i, part in enumerate(msg.iter_attachments()):
        if i == index:
            data = part.get_payload(decode=True)
            return (
                part.get_filename() or f"attachment-{i}",
                part.get_content_type(),
                data if isinstance(data, bytes) else b"",
            )
    raise QuarantineError(f"message #{message_id} has no attachment {index}")


def summary(session: Session, row: InboundMessage) -> dict[str, Any]:
    return {
        "id": row.id,
        "received_at": row.received_at.isoformat(),
        "sender": row.sender,
        "subject": row.subject,
        "outcome": row.outcome.value if row.outcome else None,
        "detail": row.detail,
        "size": row.size,
        "review": row.review,
        "reviewed_by": row.reviewed_by,
        "attachments": [a.__dict__ for a in attachments(session, row.id or 0)],
    }


def _audit(session: Session, actor: str, action: str, row_id: int, why: str) -> None:
    session.add(AuditEvent(actor=actor, action=action, target=f"message #{row_id}", detail=why))


def release(
    pipeline: Pipeline, message_id: int, actor: str, why: str, *, trust_sender: bool = False
) -> str:
    """Process the message again; returns the new outcome."""
    if not why.strip():
        raise QuarantineError("say why (--reason)")
    with Session(pipeline.engine) as s:
        get(s, message_id)
    try:
        outcome = pipeline.release(message_id, trust_sender=trust_sender)
    except ReleaseError as exc:
        raise QuarantineError(f"message #{message_id}: {exc}") from None
    with Session(pipeline.engine) as s:
        row = s.get(InboundMessage, message_id)
        assert row is not None
        if outcome not in QUARANTINE_OUTCOMES:  # still held: it stays on the list for a person
            row.review, row.reviewed_by, row.reviewed_at = "released", actor, utcnow()
        s.add(row)
        detail = f"{why.strip()} -> {outcome.value}" + (
            " (sender vouched for)" if trust_sender else ""
        )
        _audit(s, actor, "quarantine.release", message_id, detail)
        s.commit()
    return outcome.value


def reject(session: Session, message_id: int, actor: str, why: str) -> None:
    """Close a quarantined message with no further processing."""
    if not why.strip():
        raise QuarantineError("say why (--reason)")
    row = get(session, message_id)
    if row.review is not None:
        raise QuarantineError(f"message #{message_id} was already {row.review}")
    row.review, row.reviewed_by, row.reviewed_at = "rejected", actor, utcnow()
    session.add(row)
    _audit(session, actor, "quarantine.reject", message_id, why.strip())
