"""The referral form's field schema, loaded from `rules/fields.toml`.

One schema serves the blank forms, the form readers, validation and the referral record, so a
field added or relabelled in `rules/` changes all of them together.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Literal

FieldType = Literal[
    "text", "date", "choice", "yes_no", "upn", "uk_postcode", "uk_phone", "email", "urn"
]
Need = Literal["M", "C", "O"]

RULES_DIR = Path(__file__).resolve().parent.parent / "rules"
"""The rules folder shipped beside the package (an installed copy is found the same way)."""


class SchemaError(ValueError):
    """The field schema in `rules/` is malformed."""


@dataclass(frozen=True)
class Choice:
    id: str
    label: str


@dataclass(frozen=True)
class Condition:
    """`field = value`: when a C field becomes mandatory."""

    field: str
    value: str

    def __str__(self) -> str:
        return f"{self.field} = {self.value}"


@dataclass(frozen=True)
class FieldSpec:
    id: str
    section: str
    label: str
    type: FieldType
    need: Need
    aliases: tuple[str, ...] = ()
    choices: tuple[Choice, ...] = ()
    when: Condition | None = None
    personal: bool = False

    @property
    def choice_ids(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.choices)

    def choice_label(self, choice_id: str) -> str:
        for c in self.choices:
            if c.id == choice_id:
                return c.label
        return choice_id


@dataclass(frozen=True)
class Section:
    id: str
    title: str


@dataclass(frozen=True)
class FormSchema:
    sections: tuple[Section, ...]
    fields: tuple[FieldSpec, ...]
    _by_id: dict[str, FieldSpec] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_id.update({f.id: f for f in self.fields})

    def __getitem__(self, field_id: str) -> FieldSpec:
        return self._by_id[field_id]

    def __contains__(self, field_id: object) -> bool:
        return field_id in self._by_id

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(f.id for f in self.fields)

    def in_section(self, section_id: str) -> tuple[FieldSpec, ...]:
        return tuple(f for f in self.fields if f.section == section_id)

    @cached_property  # asked for every log line and every form field
    def personal_ids(self) -> frozenset[str]:
        return frozenset(f.id for f in self.fields if f.personal)


_NOT_ALNUM = re.compile(r"[^a-z0-9]+")


def normalise_label(text: str) -> str:
    """Labels compare case- and punctuation-insensitively: "Child's DOB:" ~ "childs dob"."""
    text = text.lower().replace("'", "").replace("’", "")
    return " ".join(_NOT_ALNUM.sub(" ", text).split())


_VALID_TYPES = set(FieldType.__args__)  # type: ignore[attr-defined]


def _parse_field(raw: dict[str, object], section_ids: set[str]) -> FieldSpec:
    try:
        fid = str(raw["id"])
        ftype = str(raw["type"])
        need = str(raw["need"])
        section = str(raw["section"])
        label = str(raw["label"])
    except KeyError as exc:
        raise SchemaError(f"field {raw.get('id', '?')}: missing key {exc.args[0]!r}") from None
    if ftype not in _VALID_TYPES:
        raise SchemaError(f"field {fid}: unknown type {ftype!r}")
    if need not in ("M", "C", "O"):
        raise SchemaError(f"field {fid}: need must be M, C or O, not {need!r}")
    if section not in section_ids:
        raise SchemaError(f"field {fid}: unknown section {section!r}")
    when: Condition | None = None
    if need == "C":
        cond = str(raw.get("when", ""))
        if "=" not in cond:
            raise SchemaError(f'field {fid}: a C field needs `when = "field = value"`')
        left, right = (p.strip() for p in cond.split("=", 1))
        when = Condition(left, right)
    raw_choices = raw.get("choices", [])
    assert isinstance(raw_choices, list)
    choices = tuple(Choice(str(c["id"]), str(c["label"])) for c in raw_choices)
    if ftype == "choice" and not choices:
        raise SchemaError(f"field {fid}: a choice field needs choices")
    raw_aliases = raw.get("aliases", [])
    assert isinstance(raw_aliases, list)
    return FieldSpec(
        id=fid,
        section=section,
        label=label,
        type=ftype,  # type: ignore[arg-type]
        need=need,  # type: ignore[arg-type]
        aliases=tuple(str(a) for a in raw_aliases),
        choices=choices,
        when=when,
        personal=bool(raw.get("personal", False)),
    )


def parse_schema(data: dict[str, object]) -> FormSchema:
    raw_sections = data.get("sections", [])
    raw_fields = data.get("fields", [])
    if not isinstance(raw_sections, list) or not isinstance(raw_fields, list):
        raise SchemaError("fields.toml needs [[sections]] and [[fields]] tables")
    sections = tuple(Section(str(s["id"]), str(s["title"])) for s in raw_sections)
    section_ids = {s.id for s in sections}
    fields = tuple(_parse_field(f, section_ids) for f in raw_fields)
    seen: set[str] = set()
    for f in fields:
        if f.id in seen:
            raise SchemaError(f"field {f.id} is defined twice")
        seen.add(f.id)
    for f in fields:
        if f.when is not None and f.when.field not in seen:
            raise SchemaError(f"field {f.id}: condition names unknown field {f.when.field!r}")
    return FormSchema(sections=sections, fields=fields)


def load_schema(path: Path | None = None) -> FormSchema:
    path = path or RULES_DIR / "fields.toml"
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SchemaError(f"cannot read field schema {path}: {exc}") from None
    return parse_schema(data)


@lru_cache(maxsize=1)
def default_schema() -> FormSchema:
    """The schema shipped in `rules/fields.toml`, loaded once."""
    return load_schema()
