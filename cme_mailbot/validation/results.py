"""What validation is given (the context) and what it gives back (the result)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = ["RuleFailure", "ValidationContext", "ValidationResult"]


@dataclass(frozen=True)
class RuleFailure:
    """One rule that a form broke (or, in `warnings`, a note that does not stop the referral)."""

    rule_id: str
    message: str
    """Plain English for the school: names the field by its printed label, says what to do."""
    source: str
    fields: tuple[str, ...] = ()


@dataclass
class ValidationResult:
    """Everything validation found about one form, all at once."""

    values: dict[str, object]
    """Field id -> normalised value; blank fields and fields that failed to parse are absent."""
    failures: list[RuleFailure] = field(default_factory=list)
    warnings: list[RuleFailure] = field(default_factory=list)
    duplicate_of: str | None = None
    """The reference of an open referral for the same child (rule 9), if any."""
    safeguarding_alert: bool = False
    """Rule 10: alert the safeguarding contacts now, whatever else is wrong with the form."""

    @property
    def ok(self) -> bool:
        return not self.failures


def _no_open_referral(values: Mapping[str, object]) -> str | None:
    return None


@dataclass(frozen=True)
class ValidationContext:
    """The facts from outside the form that the rules need."""

    today: dt.date
    sender_urns: frozenset[str]
    """Rule 8: URNs of the sender's schools on the approved list."""
    find_open_referral: Callable[[Mapping[str, object]], str | None] = _no_open_referral
    """Rule 9: given normalised values, the reference of an open referral for the same child (same
    UPN, or same first and last name and date of birth), or None."""
    contacts: Mapping[str, str] = field(default_factory=dict)
    """Values for placeholders in rule messages: ehe_contact, admissions_contact, mash_phone, ..."""
