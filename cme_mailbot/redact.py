"""Keeping children's data out of logs and subject lines."""

from __future__ import annotations

import re
from collections.abc import Iterable
from contextvars import ContextVar

# A UPN-shaped token: a letter then 11 digits then a digit or letter.
UPN_PATTERN = re.compile(r"\b[A-Za-z]\d{11}[A-Za-z0-9]\b")
REDACTED = "[redacted]"

_sensitive: ContextVar[tuple[str, ...]] = ContextVar("cme_sensitive_values", default=())


def remember_sensitive(values: Iterable[object]) -> None:
    """Register values (a child's name, DOB, address...) that must not appear in any log line."""
    extra = tuple(str(v) for v in values if v is not None and len(str(v).strip()) >= 2)
    _sensitive.set(_sensitive.get() + extra)


def forget_sensitive() -> None:
    _sensitive.set(())


def scrub(text: str, extra: Iterable[str] = ()) -> str:
    """Replace every remembered sensitive value, and anything UPN-shaped, with [redacted]."""
    values = sorted({*(_sensitive.get()), *extra}, key=len, reverse=True)
    for value in values:
        if value and value in text:
            text = text.replace(value, REDACTED)
        elif value and value.lower() in text.lower():
            text = re.sub(re.escape(value), REDACTED, text, flags=re.I)
    return UPN_PATTERN.sub(REDACTED, text)
