"""Validation of a read form against the field schema and the CME rules in `rules/`.

The kinds of check are code (`checks.py`); which rules apply, in what order, with what wording and
source, is data (`rules/rules.toml`). `values.py` parses each field's text into its typed value and
`school_age.py` works out compulsory school age.
"""

from cme_mailbot.validation.checks import RuleBookError
from cme_mailbot.validation.results import RuleFailure, ValidationContext, ValidationResult
from cme_mailbot.validation.rulebook import Rule, RuleBook, default_rulebook
from cme_mailbot.validation.school_age import (
    compulsory_school_age_window,
    is_compulsory_school_age,
)
from cme_mailbot.validation.values import (
    ValueFormatError,
    normalise_email,
    normalise_phone,
    normalise_postcode,
    normalise_upn,
    normalise_urn,
    parse_choice,
    parse_date,
    parse_yes_no,
)

__all__ = [
    "Rule",
    "RuleBook",
    "RuleBookError",
    "RuleFailure",
    "ValidationContext",
    "ValidationResult",
    "ValueFormatError",
    "compulsory_school_age_window",
    "default_rulebook",
    "is_compulsory_school_age",
    "normalise_email",
    "normalise_phone",
    "normalise_postcode",
    "normalise_upn",
    "normalise_urn",
    "parse_choice",
    "parse_date",
    "parse_yes_no",
]
