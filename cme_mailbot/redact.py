"""Keeping children's data out of logs and subject lines."""

from __future__ import annotations

import re
from collections.abc import Iterable
from contextvars import ContextVar

# A UPN-shaped token: a letter then 11 digits then a digit or letter.
UPN_PATTERN = re.compile(r"\b[A-Za-z]\d{11}[A-Za-z0-9]\b")
REDACTED = "[redacted]"

# The values to scrub for the message in hand, longest first, each with its lower-cased form:
# worked out when they are remembered rather than for every string of every log line.
_sensitive: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("cme_sensitive_values", default=())


def _prepared(values: Iterable[str]) -> tuple[tuple[str, str], ...]:
    return tuple((v, v.lower()) for v in sorted(set(values), key=len, reverse=True) if v)


def remember_sensitive(values: Iterable[object]) -> None:
    """Register values (a child's name, DOB, address...) that must not appear in any log line."""
    extra = [str(v) for v in values if v is not None and len(str(v).strip()) >= 2]
    if extra:
        _sensitive.set(_prepared([*(v for v, _ in _sensitive.get()), *extra]))


def forget_sensitive() -> None:
    _sensitive.set(())


def scrub(text: str, extra: Iterable[str] = ()) -> str:
    """Replace every remembered sensitive value, and anything UPN-shaped, with [redacted]."""
    values = _sensitive.get()
    extra = tuple(extra)
    if extra:
        values = _prepared([*(v for v, _ in values), *extra])
    lowered = text.lower() if values else text
    for value, low in values:
        if value in text:
            text = text.replace(value, REDACTED)
            lowered = text.lower()
        elif low in lowered:
            text = re.sub(re.escape(value), REDACTED, text, flags=re.I)
            lowered = text.lower()
    return UPN_PATTERN.sub(REDACTED, text)
