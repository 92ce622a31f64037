"""The approved-sender list: addresses, each tied to one or more schools by URN."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

from sqlalchemy import bindparam
from sqlmodel import Session, col, select

from cme_mailbot.models import ApprovedContact, AuditEvent, ContactSchool, School

URN_RE = re.compile(r"^\d{6}$")
EMAIL_RE = re.compile(r"^[^@\s<>\"]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")


class ContactError(ValueError):
    """Bad input for the approved-sender list; one line, naming the problem."""


@dataclass(frozen=True)
class ContactView:
    email: str
    schools: list[dict[str, str]]


def normalise_email(address: str) -> str:
    address = address.strip().lower()
    if not EMAIL_RE.match(address):
        raise ContactError(f"not an email address: {address!r}")
    return address


def normalise_urn(urn: str) -> str:
    urn = urn.strip()
    if not URN_RE.match(urn):
        raise ContactError(f"a school URN is 6 digits, not {urn!r}")
    return urn


DEFAULT_SCOPE = "default"


def _find(session: Session, email: str, scope: str) -> ApprovedContact | None:
    return session.exec(
        select(ApprovedContact)
        .where(ApprovedContact.email == email)
        .where(ApprovedContact.scope == scope)
    ).first()


_SCHOOLS_OF = (
    select(ContactSchool.school_urn)
    .join(ApprovedContact, col(ApprovedContact.id) == col(ContactSchool.contact_id))
    .where(col(ApprovedContact.email) == bindparam("email"))
    .where(col(ApprovedContact.scope) == bindparam("scope"))
)  # built once: it runs for every message


def schools_of(session: Session, address: str, scope: str = DEFAULT_SCOPE) -> frozenset[str]:
    """The URNs an address may refer for in a mailbox's list; empty when it is not approved."""
    params = {"email": address.strip().lower(), "scope": scope}
    return frozenset(session.connection().execute(_SCHOOLS_OF, params).scalars())


def add_contact(
    session: Session,
    email: str,
    urn: str,
    school_name: str | None = None,
    actor: str = "cli",
    scope: str = DEFAULT_SCOPE,
) -> bool:
    """Approve `email` for school `urn`. False when it already was."""
    email, urn = normalise_email(email), normalise_urn(urn)
    school = session.get(School, urn)
    if school is None:
        session.add(School(urn=urn, name=school_name or ""))
    elif school_name and school.name != school_name:
        school.name = school_name
        session.add(school)
    contact = _find(session, email, scope)
    if contact is None:
        contact = ApprovedContact(email=email, scope=scope)
        session.add(contact)
        session.flush()
    assert contact.id is not None
    if session.get(ContactSchool, (contact.id, urn)) is not None:
        return False
    session.add(ContactSchool(contact_id=contact.id, school_urn=urn))
    where = "" if scope == DEFAULT_SCOPE else f" (list {scope})"
    session.add(
        AuditEvent(actor=actor, action="contact.add", target=email, detail=f"URN {urn}{where}")
    )
    return True


def remove_contact(
    session: Session, email: str, actor: str = "cli", scope: str = DEFAULT_SCOPE
) -> bool:
    email = normalise_email(email)
    contact = _find(session, email, scope)
    if contact is None:
        return False
    for link in session.exec(
        select(ContactSchool).where(ContactSchool.contact_id == contact.id)
    ).all():
        session.delete(link)
    session.flush()  # the links go before the contact they point at
    session.delete(contact)
    detail = "" if scope == DEFAULT_SCOPE else f"list {scope}"
    session.add(AuditEvent(actor=actor, action="contact.remove", target=email, detail=detail))
    return True


def list_contacts(session: Session, scope: str = DEFAULT_SCOPE) -> list[ContactView]:
    out: list[ContactView] = []
    query = (
        select(ApprovedContact)
        .where(ApprovedContact.scope == scope)
        .order_by(col(ApprovedContact.email))
    )
    for contact in session.exec(query):
        rows = session.exec(
            select(School)
            .join(ContactSchool, col(ContactSchool.school_urn) == col(School.urn))
            .where(ContactSchool.contact_id == contact.id)
            .order_by(col(School.urn))
        ).all()
        out.append(ContactView(contact.email, [{"urn": s.urn, "name": s.name} for s in rows]))
    return out


def import_csv(
    session: Session, text: str, actor: str = "cli", scope: str = DEFAULT_SCOPE
) -> tuple[int, int]:
    """Rows of email, school_urn[, school_name] (header optional). Returns (added, unchanged).

    The whole file is checked first: one bad row and nothing is imported.
    """
    rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
    if rows and rows[0] and rows[0][0].strip().lower() in ("email", "address", "email address"):
        rows = rows[1:]
    parsed: list[tuple[str, str, str | None]] = []
    for n, row in enumerate(rows, start=1):
        if len(row) < 2:
            raise ContactError(f"row {n}: needs email and school_urn")
        try:
            parsed.append(
                (
                    normalise_email(row[0]),
                    normalise_urn(row[1]),
                    row[2].strip() if len(row) > 2 and row[2].strip() else None,
                )
            )
        except ContactError as exc:
            raise ContactError(f"row {n}: {exc}") from None
    added = sum(add_contact(session, e, u, n, actor=actor, scope=scope) for e, u, n in parsed)
    return added, len(parsed) - added
