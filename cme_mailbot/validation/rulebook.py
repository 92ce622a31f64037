"""The rule book: the rules of `rules/rules.toml`, loaded, checked, and applied to a read form.

Each rule is a table in `[[rules]]` with the common keys `id`, `kind`, `enabled`, `message`,
`source` and optional `severity` ("failure", the default, or "warning"), plus the parameters of
its kind (see `checks.py`). Rules run in file order and their failures are reported in that
order. A message is a template: `{label}` and the kind's other placeholders come from the check,
`{ehe_contact}` and the like from `ValidationContext.contacts`; an unknown placeholder is left
as written so it shows up in review rather than crashing a reply.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from cme_mailbot.schema import RULES_DIR, FormSchema, default_schema
from cme_mailbot.validation.checks import (
    CHECKS,
    Check,
    Finding,
    Form,
    Params,
    RuleBookError,
    check_template,
)
from cme_mailbot.validation.results import RuleFailure, ValidationContext, ValidationResult

__all__ = ["Rule", "RuleBook", "RuleBookError", "default_rulebook", "render_message"]

Severity = Literal["failure", "warning"]
_COMMON_KEYS = frozenset({"id", "kind", "enabled", "severity", "message", "source"})
_RULE_ID = re.compile(r"[a-z][a-z0-9_]*")


class _Readable(dict[str, str]):
    """Placeholders with no value stay readable as `{name}`."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def render_message(template: str, placeholders: Mapping[str, str]) -> str:
    """Fill a message template; unknown placeholders are left as `{name}`."""
    return template.format_map(_Readable(placeholders))


@dataclass(frozen=True)
class Rule:
    id: str
    kind: str
    enabled: bool
    severity: Severity
    message: str
    source: str
    check: Check


def _parse_rule(index: int, raw: object, schema: FormSchema) -> Rule:
    if not isinstance(raw, dict):
        raise RuleBookError(f"rule #{index + 1}: must be a table")
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not _RULE_ID.fullmatch(rule_id):
        raise RuleBookError(f"rule #{index + 1}: key 'id' must be a lower_case_name")

    def text(key: str) -> str:
        value = raw.get(key)
        if not isinstance(value, str) or not value.strip():
            raise RuleBookError(f"rule {rule_id}: key {key!r} must be a non-empty string")
        return value

    kind = text("kind")
    if kind not in CHECKS:
        known = ", ".join(sorted(CHECKS))
        raise RuleBookError(f"rule {rule_id}: key 'kind' {kind!r} is not one of: {known}")
    enabled = raw.get("enabled")
    if not isinstance(enabled, bool):
        raise RuleBookError(f"rule {rule_id}: key 'enabled' must be true or false")
    severity = raw.get("severity", "failure")
    if severity not in ("failure", "warning"):
        raise RuleBookError(f"rule {rule_id}: key 'severity' must be 'failure' or 'warning'")
    message = text("message")
    check_template(rule_id, "message", message)
    source = text("source")
    params = Params(rule_id, {k: v for k, v in raw.items() if k not in _COMMON_KEYS}, schema)
    check = CHECKS[kind](params)
    params.finish()
    if check.always_on and not enabled:
        raise RuleBookError(f"rule {rule_id}: a {kind} rule cannot be disabled")
    if check.always_on and severity != "warning":
        raise RuleBookError(
            f"rule {rule_id}: key 'severity' must be 'warning' for a {kind} rule "
            "(the referral is recorded and the concern passed on, never refused)"
        )
    return Rule(rule_id, kind, enabled, severity, message, source, check)


def parse_rulebook(data: Mapping[str, object], schema: FormSchema) -> RuleBook:
    raw_rules = data.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise RuleBookError("the rule book needs a [[rules]] table for each rule")
    unknown_top = sorted(set(data) - {"rules"})
    if unknown_top:
        raise RuleBookError(f"the rule book has an unknown top-level key {unknown_top[0]!r}")
    rules = [_parse_rule(i, raw, schema) for i, raw in enumerate(raw_rules)]
    ids: set[str] = set()
    for rule in rules:
        if rule.id in ids:
            raise RuleBookError(f"rule {rule.id} is defined twice")
        ids.add(rule.id)
    for rule in rules:
        for ref in rule.check.rule_refs():
            if ref not in ids:
                raise RuleBookError(f"rule {rule.id}: names unknown rule {ref!r}")
    always_on = {kind for kind, cls in CHECKS.items() if cls.always_on}
    for kind in sorted(always_on - {r.kind for r in rules}):
        raise RuleBookError(f"the rule book needs a {kind} rule")
    return RuleBook(tuple(rules), schema)


class RuleBook:
    """The rules, in order, ready to validate forms."""

    def __init__(self, rules: tuple[Rule, ...], schema: FormSchema) -> None:
        self.rules = rules
        self.schema = schema

    @classmethod
    def load(cls, path: Path, schema: FormSchema) -> RuleBook:
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise RuleBookError(f"cannot read rule book {path}: {exc}") from None
        return parse_rulebook(data, schema)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(rule.id for rule in self.rules)

    def validate(self, raw: Mapping[str, str], ctx: ValidationContext) -> ValidationResult:
        """Check a read form (field id -> text) against every enabled rule at once."""
        form = Form.read(self.schema, raw, ctx.today)
        enabled = [(i, rule) for i, rule in enumerate(self.rules) if rule.enabled]
        for _, rule in enabled:
            form.claimed |= rule.check.claims(form)
        found: list[tuple[int, Rule, Finding]] = []
        for deferred in (False, True):
            for i, rule in enabled:
                if rule.check.deferred is not deferred:
                    continue
                for finding in rule.check.run(form, ctx):
                    found.append((i, rule, finding))
                    form.findings.append((rule.id, finding))
        found.sort(key=lambda item: item[0])
        result = ValidationResult(
            values=form.values,
            duplicate_of=form.duplicate_of,
            safeguarding_alert=form.safeguarding_alert,
        )
        for _, rule, finding in found:
            placeholders = {**ctx.contacts, **finding.placeholders}
            failure = RuleFailure(
                rule_id=rule.id,
                message=render_message(finding.template or rule.message, placeholders),
                source=rule.source,
                fields=finding.fields,
            )
            (result.failures if rule.severity == "failure" else result.warnings).append(failure)
        return result


@lru_cache(maxsize=1)
def default_rulebook() -> RuleBook:
    """The rule book shipped in `rules/rules.toml`, with the default field schema; loaded once."""
    return RuleBook.load(RULES_DIR / "rules.toml", default_schema())
