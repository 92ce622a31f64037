"""Referral references such as CME-2026-00042: a per-year sequence in the database."""

from __future__ import annotations

import threading
import weakref

from sqlalchemy import bindparam, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from cme_mailbot.models import ReferenceCounter

# Years whose counter row is known to exist, per engine: the row is never deleted, so once seen
# it need not be looked up again for every message.
_ensured: weakref.WeakKeyDictionary[Engine, set[int]] = weakref.WeakKeyDictionary()
_ensured_lock = threading.Lock()


def ensure_counter(engine: Engine, year: int) -> None:
    """Create the year's counter in its own transaction, so two pollers never race on it later."""
    with _ensured_lock:
        if year in _ensured.get(engine, ()):
            return
    with Session(engine) as s:
        if s.get(ReferenceCounter, year) is None:
            s.add(ReferenceCounter(year=year, last=0))
            try:
                s.commit()
            except IntegrityError:
                s.rollback()  # another instance created it first: fine
    with _ensured_lock:
        _ensured.setdefault(engine, set()).add(year)


_NEXT = (
    update(ReferenceCounter.__table__)  # type: ignore[attr-defined]
    .where(ReferenceCounter.__table__.c.year == bindparam("y"))  # type: ignore[attr-defined]
    .values(last=ReferenceCounter.__table__.c.last + 1)  # type: ignore[attr-defined]
    .returning(ReferenceCounter.__table__.c.last)  # type: ignore[attr-defined]
)


def next_reference(conn: Connection, year: int) -> str:
    """Allocate the next reference inside the caller's transaction (the row lock serialises)."""
    last = conn.execute(_NEXT, {"y": year}).scalar_one()
    return f"CME-{year}-{last:05d}"
