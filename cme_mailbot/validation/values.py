"""Parse and normalise the text of one form field into its typed value.

Each parser takes the text as read from a filled form and returns the normalised value, or raises
`ValueFormatError`. The error's message describes what was expected and NEVER repeats the input:
the input is a child's personal data, and exception text reaches logs.

Normalised forms (the values stored in the referral record):

- date: `datetime.date`. UK day-first only: `03/04/2015`, `3/4/15`, `03-04-2015`, `03.04.2015`,
  `3 April 2015`, `3rd Apr 2015`, `3-Apr-2015`, and ISO `2015-04-03`. An impossible date
  (`31/02/2016`) is an error, never a guess. A two-digit year `yy` is 20yy when yy is at most the
  current year's two digits, otherwise 19yy (in 2025, `15` is 2015 and `30` is 1930). A
  four-digit year must be between 1900 and 2099.
- yes_no: `bool`. yes/no, y/n, true/false, on/off (PDF check boxes, also `/Yes`, `/Off`), 1/0,
  `x` = yes, and Word check boxes `☒` = yes, `☐` = no.
- choice: the choice id; matched against the id or the printed label, ignoring case, spaces,
  underscores and punctuation.
- upn: 13 characters, upper case, no spaces. Only the shape is checked here; the check letter
  and the LA code are checked by the rules (`upn_check_letter`, `upn_la_known`), so the school
  is told precisely what is wrong.
- uk_postcode: upper case with one space before the inward code, e.g. `LU1 2AB`.
- uk_phone: E.164, e.g. `+441582123456` (valid numbers only, read with region GB so `01582 ...`
  works; an international number written with `+` is accepted, since a family may have moved
  abroad). An extension is kept as ` ext. 123`.
- email: the address with its domain lower-cased (the local part is kept as written).
- urn: 6 digits.
- text: stripped of surrounding white space.
"""

from __future__ import annotations

import datetime as dt
import functools
import re

import phonenumbers
from stdnum.exceptions import InvalidComponent, ValidationError
from stdnum.gb import upn as stdnum_upn

from cme_mailbot.schema import FieldSpec, normalise_label

__all__ = [
    "ValueFormatError",
    "count_dates",
    "normalise_email",
    "normalise_phone",
    "normalise_postcode",
    "normalise_upn",
    "normalise_urn",
    "parse_choice",
    "parse_date",
    "parse_value",
    "parse_yes_no",
    "upn_check_letter_ok",
    "upn_la_known",
]


class ValueFormatError(ValueError):
    """A field's text is not a value of its type. The message never contains the text."""


# ---- dates -----------------------------------------------------------------------------------

_MONTHS = {
    "jan": 1,
    "january": 1,
    "feb": 2,
    "february": 2,
    "mar": 3,
    "march": 3,
    "apr": 4,
    "april": 4,
    "may": 5,
    "jun": 6,
    "june": 6,
    "jul": 7,
    "july": 7,
    "aug": 8,
    "august": 8,
    "sep": 9,
    "sept": 9,
    "september": 9,
    "oct": 10,
    "october": 10,
    "nov": 11,
    "november": 11,
    "dec": 12,
    "december": 12,
}

_DAY_FIRST = re.compile(r"(\d{1,2})([/.\-])(\d{1,2})\2(\d{4}|\d{2})")
_ISO = re.compile(r"(\d{4})([/.\-])(\d{1,2})\2(\d{1,2})")
_WORDS = re.compile(
    r"(\d{1,2})(?:st|nd|rd|th)?(?:\s+of)?[\s\-]+([a-z]+)\.?,?[\s\-]+(\d{4}|\d{2})",
    re.IGNORECASE,
)

DATE_PATTERNS: tuple[re.Pattern[str], ...] = (_DAY_FIRST, _ISO, _WORDS)
"""The shapes of a date; also used to spot a field that holds more than one date."""


def _full_year(text: str, today: dt.date) -> int:
    year = int(text)
    if len(text) == 4:
        return year
    century = today.year // 100 * 100
    return century + year if year <= today.year % 100 else century - 100 + year


def parse_date(text: str, *, today: dt.date | None = None) -> dt.date:
    """A UK day-first date. `today` sets the two-digit-year pivot (default: the real today)."""
    today = today or dt.date.today()
    text = " ".join(text.split())
    if m := _DAY_FIRST.fullmatch(text):
        day, month, year = int(m[1]), int(m[3]), _full_year(m[4], today)
    elif m := _ISO.fullmatch(text):
        year, month, day = int(m[1]), int(m[3]), int(m[4])
    elif m := _WORDS.fullmatch(text):
        month_number = _MONTHS.get(m[2].lower())
        if month_number is None:
            raise ValueFormatError("the month name is not recognised")
        day, month, year = int(m[1]), month_number, _full_year(m[3], today)
    else:
        raise ValueFormatError("not a date in a recognised day-first format")
    if not 1900 <= year <= 2099:
        raise ValueFormatError("the year is not between 1900 and 2099")
    try:
        return dt.date(year, month, day)
    except ValueError:
        raise ValueFormatError("no such day in the calendar") from None


def count_dates(text: str) -> int:
    """How many date-shaped pieces a text holds (two dates of birth in one field, say)."""
    text = " ".join(text.split())
    found: list[tuple[int, int]] = []
    for pattern in DATE_PATTERNS:
        for m in pattern.finditer(text):
            if not any(m.start() < end and start < m.end() for start, end in found):
                found.append((m.start(), m.end()))
    return len(found)


# ---- yes/no and choices ----------------------------------------------------------------------

_YES = frozenset({"yes", "y", "true", "x", "on", "1", "☒", "☑", "✓", "✔"})
_NO = frozenset({"no", "n", "false", "off", "0", "☐"})


def parse_yes_no(text: str) -> bool:
    """Yes or no, from a word, a PDF check box state or a Word check box."""
    word = text.strip().lstrip("/").rstrip(".").strip().lower()
    if word in _YES:
        return True
    if word in _NO:
        return False
    raise ValueFormatError("not yes or no")


def parse_choice(spec: FieldSpec, text: str) -> str:
    """The id of the choice whose id or printed label the text names."""
    wanted = normalise_label(text)
    if wanted:
        for choice_id, names in _choice_names(spec):
            if wanted in names:
                return choice_id
    raise ValueFormatError(f"not one of the choices for {spec.label}")


@functools.cache  # the schema's own words, normalised once (never the text a form holds)
def _choice_names(spec: FieldSpec) -> tuple[tuple[str, frozenset[str]], ...]:
    return tuple(
        (c.id, frozenset({normalise_label(c.id), normalise_label(c.label)})) for c in spec.choices
    )


# ---- identifiers -----------------------------------------------------------------------------

_UPN_SHAPE = re.compile(r"[A-Z]\d{11}[0-9A-HJ-NPQRT-Z]")


def normalise_upn(text: str) -> str:
    """A UPN's 13 characters, upper case without spaces or hyphens; shape only (see module)."""
    number = re.sub(r"[\s\-]", "", text).upper()
    if len(number) != 13:
        raise ValueFormatError("a UPN has 13 characters")
    if not _UPN_SHAPE.fullmatch(number):
        raise ValueFormatError("a UPN is a letter, 11 digits and a final digit or letter")
    return number


def upn_check_letter_ok(number: str) -> bool:
    """Whether a normalised UPN's first character is the DfE check letter for the other 12."""
    return bool(stdnum_upn.calc_check_digit(number[1:]) == number[0])


def upn_la_known(number: str) -> bool:
    """Whether a normalised UPN's LA code is one python-stdnum knows.

    stdnum's `validate` tests the LA code before the check letter, so it is asked about the
    number with its check letter corrected: then the only component that can fail is the LA code.
    """
    corrected = stdnum_upn.calc_check_digit(number[1:]) + number[1:]
    try:
        stdnum_upn.validate(corrected)
    except InvalidComponent:
        return False
    except ValidationError:  # pragma: no cover - the shape was checked by normalise_upn
        return True
    return True


_POSTCODE = re.compile(r"(GIR|[A-Z]{1,2}\d[A-Z\d]?)(\d[A-Z]{2})")


def normalise_postcode(text: str) -> str:
    """A UK postcode, upper case with one space before the inward code: `LU1 2AB`."""
    compact = re.sub(r"\s", "", text).upper()
    m = _POSTCODE.fullmatch(compact)
    if m is None or (m[1] == "GIR" and m[2] != "0AA"):
        raise ValueFormatError("not a UK postcode")
    return f"{m[1]} {m[2]}"


def normalise_phone(text: str) -> str:
    """A valid telephone number in E.164 (`+441582123456`), read with region GB."""
    try:
        number = phonenumbers.parse(text, "GB")
    except phonenumbers.NumberParseException:
        raise ValueFormatError("not a telephone number") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueFormatError("not a valid telephone number")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return f"{e164} ext. {number.extension}" if number.extension else e164


_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+)*")
_DOMAIN_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?")


def normalise_email(text: str) -> str:
    """A plain `local@domain.tld` address with its domain lower-cased."""
    address = text.strip()
    if address.lower().startswith("mailto:"):
        address = address[len("mailto:") :]
    local, at, domain = address.rpartition("@")
    if not at or len(address) > 254 or len(local) > 64 or not _LOCAL_PART.fullmatch(local):
        raise ValueFormatError("not an email address")
    labels = domain.split(".")
    if len(labels) < 2 or not all(_DOMAIN_LABEL.fullmatch(label) for label in labels):
        raise ValueFormatError("not an email address")
    if not re.fullmatch(r"[A-Za-z]{2,63}|xn--[A-Za-z0-9\-]+", labels[-1]):
        raise ValueFormatError("not an email address")
    return f"{local}@{domain.lower()}"


def normalise_urn(text: str) -> str:
    """A school's Unique Reference Number: 6 digits."""
    urn = re.sub(r"\s", "", text)
    if not re.fullmatch(r"\d{6}", urn):
        raise ValueFormatError("a school URN is 6 digits")
    return urn


def parse_value(spec: FieldSpec, text: str, *, today: dt.date | None = None) -> object:
    """The normalised value of a field from its (non-blank) text, by the field's type."""
    match spec.type:
        case "date":
            return parse_date(text, today=today)
        case "yes_no":
            return parse_yes_no(text)
        case "choice":
            return parse_choice(spec, text)
        case "upn":
            return normalise_upn(text)
        case "uk_postcode":
            return normalise_postcode(text)
        case "uk_phone":
            return normalise_phone(text)
        case "email":
            return normalise_email(text)
        case "urn":
            return normalise_urn(text)
        case "text":
            return text.strip()
