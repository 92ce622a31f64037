"""Read models for the command line and the console: messages and referrals as plain dicts.

The JSON shapes are fixed by behaviour.md: scripts rely on them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlmodel import Session, col, select

from cme_mailbot.models import FormResult, InboundMessage, Referral
from cme_mailbot.schema import default_schema


def _iso(value: object) -> object:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def message_dicts(session: Session) -> list[dict[str, Any]]:
    messages = session.exec(select(InboundMessage).order_by(col(InboundMessage.id))).all()
    results = session.exec(select(FormResult).order_by(col(FormResult.id))).all()
    by_message: dict[int, list[FormResult]] = {}
    for r in results:
        by_message.setdefault(r.inbound_id, []).append(r)
    out = []
    for m in messages:
        assert m.id is not None
        out.append(
            {
                "id": m.id,
                "message_id": m.message_id,
                "sender": m.sender,
                "received_at": _iso(m.received_at),
                "outcome": m.outcome.value if m.outcome else None,
                "state": m.state.value,
                "detail": m.detail,
                "forms": [
                    {
                        "filename": r.filename,
                        "result": r.result.value,
                        "reference": r.reference,
                        "reasons": r.reasons,
                    }
                    for r in by_message.get(m.id, [])
                ],
            }
        )
    return out


def referral_dict(r: Referral) -> dict[str, Any]:
    data: dict[str, Any] = {
        "reference": r.reference,
        "status": r.status.value,
        "source_message_id": r.source_message_id,
        "sibling_of": r.sibling_of,
    }
    for fid in default_schema().ids:
        data[fid] = _iso(getattr(r, fid))
    data["safeguarding_alert"] = r.safeguarding_alert
    data["created_at"] = _iso(r.created_at)
    return data


def referral_dicts(session: Session) -> list[dict[str, Any]]:
    rows = session.exec(select(Referral).order_by(col(Referral.id))).all()
    return [referral_dict(r) for r in rows]


def find_referral(session: Session, reference: str) -> Referral | None:
    return session.exec(
        select(Referral).where(Referral.reference == reference.strip().upper())
    ).first()
