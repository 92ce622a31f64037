"""The kinds of check a rule in `rules/rules.toml` can be, one class per kind.

A check is built from its rule's parameters (field ids, conditions) when the rule book loads, so a
typo in the file is a loud `RuleBookError` at start-up. At validation time it looks at the read
form and returns `Finding`s; the rule book turns each into a `RuleFailure` with the rule's wording.
"""

from __future__ import annotations

import datetime as dt
import re
import string
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

from cme_mailbot.schema import Condition, FieldSpec, FieldType, FormSchema
from cme_mailbot.validation.results import ValidationContext
from cme_mailbot.validation.school_age import is_compulsory_school_age
from cme_mailbot.validation.values import (
    ValueFormatError,
    count_dates,
    parse_value,
    upn_check_letter_ok,
    upn_la_known,
)

__all__ = [
    "CHECKS",
    "Check",
    "Finding",
    "Form",
    "Params",
    "RuleBookError",
    "check_template",
]


class RuleBookError(ValueError):
    """The rule book in `rules/` is malformed; the message names the rule and the key."""


@dataclass(frozen=True)
class Finding:
    """One thing a check found: the fields involved and values for the message's placeholders."""

    fields: tuple[str, ...]
    placeholders: Mapping[str, str] = field(default_factory=dict)
    template: str | None = None
    """A message template to use instead of the rule's `message` (e.g. a conditional field)."""


@dataclass
class Form:
    """A form as read: the text of each filled field, and the values that parsed."""

    schema: FormSchema
    text: dict[str, str]
    """Field id -> the field's text, stripped; blank fields are absent."""
    values: dict[str, object]
    unparsed: set[str]
    """Fields whose text is not a value of their type."""
    claimed: set[str] = field(default_factory=set)
    """Unparsed fields another rule explains better than `value_format` (two dates of birth)."""
    findings: list[tuple[str, Finding]] = field(default_factory=list)
    """(rule id, finding) for every finding so far, for the checks that run last."""
    duplicate_of: str | None = None
    safeguarding_alert: bool = False

    @classmethod
    def read(cls, schema: FormSchema, raw: Mapping[str, str], today: dt.date) -> Form:
        text: dict[str, str] = {}
        values: dict[str, object] = {}
        unparsed: set[str] = set()
        for spec in schema.fields:
            stripped = (raw.get(spec.id) or "").strip()
            if not stripped:
                continue
            text[spec.id] = stripped
            try:
                values[spec.id] = parse_value(spec, stripped, today=today)
            except ValueFormatError:
                unparsed.add(spec.id)
        return cls(schema=schema, text=text, values=values, unparsed=unparsed)

    def label(self, field_id: str) -> str:
        return self.schema[field_id].label


# ---- parameters ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedCondition:
    """`field = value` with the value parsed as the field's type, ready to test a form."""

    field: str
    value: object
    shown: str
    """The value as the form prints it ("Not returned from leave", "Yes")."""

    def holds(self, form: Form) -> bool:
        return form.values.get(self.field) == self.value


def parse_condition(schema: FormSchema, cond: Condition, where: str) -> ParsedCondition:
    if cond.field not in schema:
        raise RuleBookError(f"{where}: unknown field {cond.field!r}")
    spec = schema[cond.field]
    try:
        value = parse_value(spec, cond.value)
    except ValueFormatError:
        raise RuleBookError(f"{where}: {cond.value!r} is not a value of {cond.field}") from None
    if spec.type == "choice":
        shown = spec.choice_label(str(value))
    elif spec.type == "yes_no":
        shown = "Yes" if value else "No"
    else:
        shown = str(value)
    return ParsedCondition(cond.field, value, shown)


_PLACEHOLDER = re.compile(r"[a-z_][a-z0-9_]*")


def check_template(rule_id: str, key: str, template: str) -> None:
    """A message template uses plain `{name}` placeholders only (no attributes, no formats)."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise RuleBookError(f"rule {rule_id}: key {key!r} is not a valid template: {exc}") from None
    for _, name, spec, conversion in parts:
        if name is not None and (not _PLACEHOLDER.fullmatch(name) or spec or conversion):
            raise RuleBookError(
                f"rule {rule_id}: key {key!r} has placeholder {{{name}}}; "
                "use plain {name} placeholders only"
            )


class Params:
    """A rule's kind-specific keys, read with loud errors naming the rule and the key."""

    def __init__(self, rule_id: str, raw: Mapping[str, object], schema: FormSchema) -> None:
        self.rule_id = rule_id
        self.schema = schema
        self._raw = dict(raw)
        self._used: set[str] = set()

    def _error(self, key: str, problem: str) -> RuleBookError:
        return RuleBookError(f"rule {self.rule_id}: key {key!r} {problem}")

    def _get(self, key: str) -> object:
        self._used.add(key)
        if key not in self._raw:
            raise self._error(key, "is missing")
        return self._raw[key]

    def has(self, key: str) -> bool:
        return key in self._raw

    def string(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str) or not value.strip():
            raise self._error(key, "must be a non-empty string")
        return value

    def template(self, key: str) -> str:
        value = self.string(key)
        check_template(self.rule_id, key, value)
        return value

    def field(self, key: str, *types: FieldType) -> str:
        field_id = self.string(key)
        self._check_field(key, field_id, types)
        return field_id

    def fields(self, key: str, *types: FieldType) -> tuple[str, ...]:
        value = self._get(key)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise self._error(key, "must be a non-empty list of field ids")
        for field_id in value:
            self._check_field(key, field_id, types)
        return tuple(value)

    def field_groups(self, key: str) -> tuple[tuple[str, ...], ...]:
        value = self._get(key)
        if not isinstance(value, list) or not value:
            raise self._error(key, "must be a non-empty list of lists of field ids")
        groups: list[tuple[str, ...]] = []
        for group in value:
            if not isinstance(group, list) or not group:
                raise self._error(key, "must be a non-empty list of lists of field ids")
            for field_id in group:
                self._check_field(key, field_id, ())
            groups.append(tuple(group))
        return tuple(groups)

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._error(key, "must be a list of strings")
        return tuple(value)

    def string_table(self, key: str) -> dict[str, str]:
        value = self._get(key)
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise self._error(key, "must be a table of strings")
        return {str(k): str(v) for k, v in value.items()}

    def condition(self, key: str) -> ParsedCondition:
        text = self.string(key)
        if "=" not in text:
            raise self._error(key, 'must read "field = value"')
        left, right = (part.strip() for part in text.split("=", 1))
        return parse_condition(self.schema, Condition(left, right), f"rule {self.rule_id}: {key}")

    def _check_field(self, key: str, field_id: object, types: tuple[FieldType, ...]) -> None:
        if not isinstance(field_id, str) or field_id not in self.schema:
            raise self._error(key, f"names unknown field {field_id!r}")
        if types and self.schema[field_id].type not in types:
            raise self._error(key, f"field {field_id} must be of type {' or '.join(types)}")

    def finish(self) -> None:
        unknown = sorted(set(self._raw) - self._used)
        if unknown:
            raise self._error(unknown[0], "is not a parameter of this kind of rule")


# ---- the kinds -------------------------------------------------------------------------------


class Check(ABC):
    """One kind of check. Subclasses read their parameters in `__init__` and check in `run`."""

    kind: ClassVar[str]
    deferred: ClassVar[bool] = False
    """Run after every other rule (it looks at their findings)."""
    always_on: ClassVar[bool] = False
    """A rule of this kind may not be disabled or made to refuse the form."""

    @abstractmethod
    def __init__(self, params: Params) -> None:
        """Read and check the rule's parameters; loud `RuleBookError` on a bad one."""

    def claims(self, form: Form) -> set[str]:
        """Unparsed fields this check reports itself, so `value_format` leaves them alone."""
        return set()

    @abstractmethod
    def run(self, form: Form, ctx: ValidationContext) -> list[Finding]: ...

    def rule_refs(self) -> tuple[str, ...]:
        """Ids of other rules this one names (checked by the loader)."""
        return ()


CHECKS: dict[str, type[Check]] = {}
"""Kind name -> check class."""
_C = TypeVar("_C", bound=type[Check])


def _register(cls: _C) -> _C:
    CHECKS[cls.kind] = cls
    return cls


@_register
class Required(Check):
    """Rule 1: every M field is filled in, and every C field whose condition holds."""

    kind = "required"

    def __init__(self, params: Params) -> None:
        schema = params.schema
        self.conditional_message = (
            params.template("conditional_message") if params.has("conditional_message") else None
        )
        self.conditions: dict[str, ParsedCondition] = {
            spec.id: parse_condition(schema, spec.when, f"rule {params.rule_id}: field {spec.id}")
            for spec in schema.fields
            if spec.need == "C" and spec.when is not None
        }

    def run(self, form: Form, ctx: ValidationContext) -> list[Finding]:
        found: list[Finding] = []
        for spec in form.schema.fields:
            if spec.id in form.text:
                continue
            if spec.need == "M":
                found.append(Finding((spec.id,), {"label": spec.label}))
            elif spec.need == "C" and (cond := self.conditions.get(spec.id)) and cond.holds(form):
                placeholders = {
                    "label": spec.label,
                    "condition_label": form.label(cond.field),
                    "condition_value": cond.shown,
                }
                found.append(Finding((spec.id,), placeholders, self.conditional_message))
        return found


@_register
class ValueFormat(Check):
    """Every filled field's text is a value of its type; `expected` describes each type."""

    kind = "value_format"

    def __init__(self, params: Params) -> None:
        self.expected = params.string_table("expected")
        types = {spec.type for spec in params.schema.fields if spec.type != "text"}
        missing = sorted(types - set(self.expected))
        if missing:
            raise RuleBookError(f"rule {params.rule_id}: expected has no entry for {missing[0]}")

    def run(self, form: Form, ctx: ValidationContext) -> list[Finding]:
        return [
            Finding((spec.id,), {"label": spec.label, "expected": self._expected(spec)})
            for spec in form.schema.fields
            if spec.id in form.unparsed and spec.id not in form.claimed
        ]

    def _expected(self, spec: FieldSpec) -> str:
        if spec.type == "choice":
            choices = ", ".join(f"'{c.label}'" for c in spec.choices)
            return self.expected["choice"].format_map({"choices": choices})
        return self.expected[spec.type]


_SEVERAL_NAMES = re.compile(r"\band\b|[&,/;+\n]", re.IGNORECASE)


@_register
class OneChild(Check):
    """Rule 7: the child's names name one child and the date of birth holds one date."""

    kind = "one_child"

    def __init__(self, params: Params) -> None:
        self.name_fields = params.fields("name_fields", "text")
        self.dob_field = params.field("dob_field", "date")

    def _several_dates(self, form: Form) -> bool:
        return count_dates(form.text.get(self.dob_field, "")) > 1

    def claims(self, form: Form) -> set[str]:
        return {self.dob_field} if self._several_dates(form) else set()

    def run(self, form: Form, ctx: ValidationContext) -> list[Finding]:
        offending = [f for f in self.name_fields if _SEVERAL_NAMES.search(form.text.get(f, ""))]
        if self._several_dates(form):
            offending.append(self.dob_field)
        if not offending:
            return []
        return [Finding(tuple(offending), {"label": form.label(offending[0])})]


@_register
class UpnCheckLetter(Check):
    """Rule 4: the UPN's check letter is right for its other 12 characters."""

    kind = "upn_check_letter"

    def __init__(self, params: Params) -> None:
        self.field = params.field("field", "upn")

    def run(self, form: Form, ctx: ValidationContext) -> list[Finding]:
        upn = form.values.get(self.field)
        if isinstance(upn, str) and not upn_check_letter_ok(upn):
            return [Finding((self.field,), {"label": form.label(self.field)})]
        return []


@_register
class UpnLaKnown(Check):
    """A UPN with a right check letter has an LA code on the DfE list (usually a warning)."""

    kind = "upn_la_known"

    def __init__(self, params: Params) -> None:
        self.field = params.field("field", "upn")

    def run(self, form: Form, ctx: ValidationContext) -> list[Finding]:
        upn = form.values.get(self.field)
        if isinstance(upn, str) and upn_check_letter_ok(upn) and not upn_la_known(upn):
            return [Finding((self.field,), {"label": form.label(self.field)})]
        return []


def _date(form: Form, field_id: str) -> dt.date | None:
    value = form.values.get(field_id)
    return value if isinstance(value, dt.date) else None


@_register
class CompulsorySchoolAge(Check):
    """Rule 2: the child is of compulsory school age on the date of referral."""

    kind = "compulsory_school_age"

    def __init__(self, params: Params) -> None:
        self.dob_field = params.field("dob_field", "date")
        self.on_field = params.field("on_field", "date")

    def run(self, form: Form, ctx: ValidationContext) -> list[Finding]:
        dob, on = _date(form, self.dob_field), _date(form, self.on_field)
        if dob is None or on is None or is_compulsory_school_age(dob, on):
            return []
        placeholders = {"label": form.label(self.dob_field), "on_label": form.label(self.on_field)}
        return [Finding((self.dob_field, self.on_field), placeholders)]


@_register
class DatesNotFuture(Check):
    """Rule 3: the named dates are not after today."""

    kind = "dates_not_future"

    def __init__(self, params: Params) -> None:
        self.fields = params.fields("fields", "date")

    def run(self, form: Form, ctx: ValidationContext) -> list[Finding]:
        return [
            Finding((f,), {"label": form.label(f)})
            for f in self.fields
            if (d := _date(form, f)) is not None and d > ctx.today
        ]


@_register
class DateOrder(Check):
    """Rule 3: one date is on or before another."""

    kind = "date_order"

    def __init__(self, params: Params) -> None:
        self.earlier = params.field("earlier", "date")
        self.later = params.field("later", "date")

    def run(self, form: Form, ctx: ValidationContext) -> list[Finding]:
        earlier, later = _date(form, self.earlier), _date(form, self.later)
        if earlier is None or later is None or earlier <= later:
            return []
        placeholders = {"label": form.label(self.earlier), "later_label": form.label(self.later)}
        return [Finding((self.earlier, self.later), placeholders)]


@_register
class LeaveReturnPassed(Check):
    """Rule 3: when the condition holds, the agreed return date is before the referral date."""

    kind = "leave_return_passed"

    def __init__(self, params: Params) -> None:
        self.when = params.condition("when")
        self.field = params.field("field", "date")
        self.before = params.field("before", "date")

    def run(self, form: Form, ctx: ValidationContext) -> list[Finding]:
        returning, before = _date(form, self.field), _date(form, self.before)
        if not self.when.holds(form) or returning is None or before is None or returning < before:
            return []
        placeholders = {"label": form.label(self.field), "before_label": form.label(self.before)}
        return [Finding((self.field, self.before), placeholders)]


@_register
class RejectWhenYes(Check):
    """Rule 5: a yes here means the child is not missing education; say whom to contact."""

    kind = "reject_when_yes"

    def __init__(self, params: Params) -> None:
        self.field = params.field("field", "yes_no")

    def run(self, form: Form, ctx: ValidationContext) -> list[Finding]:
        if form.values.get(self.field) is True:
            return [Finding((self.field,), {"label": form.label(self.field)})]
        return []


@_register
class RequiresValue(Check):
    """Rule 6: when one condition holds, another field must have a given value."""

    kind = "requires_value"

    def __init__(self, params: Params) -> None:
        self.when = params.condition("when")
        self.require = params.condition("require")

    def run(self, form: Form, ctx: ValidationContext) -> list[Finding]:
        field_id = self.require.field
        if not self.when.holds(form) or field_id not in form.values or self.require.holds(form):
            return []
        placeholders = {
            "label": form.label(field_id),
            "required_value": self.require.shown,
            "condition_label": form.label(self.when.field),
            "condition_value": self.when.shown,
        }
        return [Finding((field_id, self.when.field), placeholders)]


@_register
class SchoolUrnApproved(Check):
    """Rule 8: the school URN is one of the sender's schools on the approved list."""

    kind = "school_urn_approved"

    def __init__(self, params: Params) -> None:
        self.field = params.field("field", "urn")

    def run(self, form: Form, ctx: ValidationContext) -> list[Finding]:
        urn = form.values.get(self.field)
        if isinstance(urn, str) and urn not in ctx.sender_urns:
            return [Finding((self.field,), {"label": form.label(self.field)})]
        return []


@_register
class Duplicate(Check):
    """Rule 9: ask for an open referral for the same child, when the child can be identified.

    The child can be identified by any group in `match_on` whose fields all parsed and none of
    which a `blocked_by` rule found wrong (a bad UPN check letter, two children on one form).
    Fields found wrong are left out of what is passed to `find_open_referral`.
    """

    kind = "duplicate"
    deferred = True

    def __init__(self, params: Params) -> None:
        self.match_on = params.field_groups("match_on")
        self.blocked_by = params.strings("blocked_by")

    def rule_refs(self) -> tuple[str, ...]:
        return self.blocked_by

    def run(self, form: Form, ctx: ValidationContext) -> list[Finding]:
        doubtful = {
            field_id
            for rule_id, finding in form.findings
            if rule_id in self.blocked_by
            for field_id in finding.fields
        }
        usable = [
            group
            for group in self.match_on
            if all(f in form.values and f not in doubtful for f in group)
        ]
        if not usable:
            return []
        identity = {k: v for k, v in form.values.items() if k not in doubtful}
        reference = ctx.find_open_referral(identity)
        if reference is None:
            return []
        form.duplicate_of = reference
        matched = tuple(dict.fromkeys(f for group in usable for f in group))
        return [Finding(matched, {"reference": reference})]


@_register
class SafeguardingAlert(Check):
    """Rule 10: a child protection concern raises the alert, whatever else is wrong.

    An answer that is filled in but is not a clear yes or no also raises it: alerting a person
    about an unclear answer to this question costs little; missing a concern costs a great deal.
    """

    kind = "safeguarding_alert"
    always_on = True

    def __init__(self, params: Params) -> None:
        self.field = params.field("field", "yes_no")
        self.unclear_message = params.template("unclear_message")

    def run(self, form: Form, ctx: ValidationContext) -> list[Finding]:
        placeholders = {"label": form.label(self.field)}
        if form.values.get(self.field) is True:
            form.safeguarding_alert = True
            return [Finding((self.field,), placeholders)]
        if self.field in form.unparsed:
            form.safeguarding_alert = True
            return [Finding((self.field,), placeholders, self.unclear_message)]
        return []
