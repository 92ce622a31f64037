"""Referral references such as CME-2026-00042: a per-year sequence in the database."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from cme_mailbot.models import ReferenceCounter


def ensure_counter(engine: Engine, year: int) -> None:
    """Create the year's counter in its own transaction, so two pollers never race on it later."""
    with Session(engine) as s:
        if s.get(ReferenceCounter, year) is not None:
            return
        s.add(ReferenceCounter(year=year, last=0))
        try:
            s.commit()
        except IntegrityError:
            s.rollback()  # another instance created it first: fine


def next_reference(session: Session, year: int) -> str:
    """Allocate the next reference inside the caller's transaction (the row lock serialises)."""
    session.execute(
        update(ReferenceCounter)
        .where(col(ReferenceCounter.year) == year)
        .values(last=ReferenceCounter.last + 1)
    )
    last = session.exec(select(ReferenceCounter.last).where(ReferenceCounter.year == year)).one()
    return f"CME-{year}-{last:05d}"
