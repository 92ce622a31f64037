"""Reading a filled PDF referral form's AcroForm fields into field id -> raw text.

A pure function of the file's bytes (it will run in a sandboxed child process). Fields are found
by name (the schema id, or a hierarchical name whose last part is the id), or failing that by a
name or tooltip that is one of the field's labels. Encrypted and unparseable PDFs raise
`FormUnreadable`; pypdf's default decompression limits are kept.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from pypdf import PdfReader
from pypdf.generic import ArrayObject, DictionaryObject, PdfObject

from cme_mailbot.forms import FormUnreadable
from cme_mailbot.forms.labels import LabelIndex
from cme_mailbot.forms.values import clean_text, drop_untouched_boxes
from cme_mailbot.schema import FormSchema, default_schema

# Field flags (PDF 32000-1, table 226 and 228); bits counted from 1.
FF_RADIO = 1 << 15
FF_PUSHBUTTON = 1 << 16

_MAX_DEPTH = 24  # the field tree of a real form is a few levels deep
_INDEX_SUFFIX = re.compile(r"\[\d+\]$")  # "child_first_name[0]" from XFA-style designers


@dataclass
class PdfField:
    """One terminal field of an AcroForm, with inherited attributes resolved."""

    name: str  # fully qualified, parts joined by "."
    obj: DictionaryObject
    ftype: str | None
    flags: int
    value: PdfObject | None
    options: list[tuple[str, str]]  # (export value, display text)
    widgets: list[DictionaryObject] = field(default_factory=list)

    @property
    def last_part(self) -> str:
        return _INDEX_SUFFIX.sub("", self.name.rsplit(".", 1)[-1])

    @property
    def tooltip(self) -> str:
        tu = self.obj.get("/TU")
        return str(tu) if tu is not None else ""


def _options(opt: PdfObject | None) -> list[tuple[str, str]]:
    if not isinstance(opt, ArrayObject):
        return []
    pairs: list[tuple[str, str]] = []
    for item in opt:
        item = item.get_object()
        if isinstance(item, ArrayObject) and len(item) >= 2:
            pairs.append((str(item[0].get_object()), str(item[1].get_object())))
        elif item is not None:
            pairs.append((str(item), str(item)))
    return pairs


def iter_fields(root: DictionaryObject) -> Iterator[PdfField]:
    """Every terminal field under a document catalog's /AcroForm, guarding against cycles."""
    acro_form = root.get("/AcroForm")
    acro_form = acro_form.get_object() if acro_form is not None else None
    if not isinstance(acro_form, DictionaryObject):
        return
    fields = acro_form.get("/Fields")
    fields = fields.get_object() if fields is not None else None
    if not isinstance(fields, ArrayObject):
        return
    seen: set[int] = set()
    for node in fields:
        yield from _walk(node, "", {}, 0, seen)


def _walk(
    node: PdfObject, parent_name: str, inherited: dict[str, PdfObject], depth: int, seen: set[int]
) -> Iterator[PdfField]:
    obj = node.get_object()
    if not isinstance(obj, DictionaryObject) or depth > _MAX_DEPTH or id(obj) in seen:
        return
    seen.add(id(obj))
    title = obj.get("/T")
    name = parent_name
    if title is not None:
        name = f"{parent_name}.{title}" if parent_name else str(title)
    attrs = dict(inherited)
    for key in ("/FT", "/Ff", "/V", "/Opt"):
        if key in obj:
            attrs[key] = obj[key]
    kids = obj.get("/Kids")
    kids = kids.get_object() if kids is not None else None
    kid_objs = [k.get_object() for k in kids] if isinstance(kids, ArrayObject) else []
    child_fields = [k for k in kid_objs if isinstance(k, DictionaryObject) and "/T" in k]
    if child_fields:
        for kid in child_fields:
            yield from _walk(kid, name, attrs, depth + 1, seen)
        return
    widgets = [k for k in kid_objs if isinstance(k, DictionaryObject)] or [obj]
    ftype = attrs.get("/FT")
    flags = attrs.get("/Ff")
    value = attrs.get("/V")
    opt = attrs.get("/Opt")
    yield PdfField(
        name=name,
        obj=obj,
        ftype=str(ftype) if ftype is not None else None,
        flags=int(flags) if isinstance(flags, int) else 0,  # pypdf's NumberObject is an int
        value=value.get_object() if value is not None else None,
        options=_options(opt.get_object() if opt is not None else None),
        widgets=widgets,
    )


def _text(value: PdfObject | None) -> str:
    if value is None:
        return ""
    if isinstance(value, ArrayObject):
        return ", ".join(_text(v.get_object()) for v in value)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def _state_name(value: PdfObject | None) -> str:
    """A button state such as /Yes or /Off, without the slash; "" if none."""
    text = _text(value).strip()
    return text[1:] if text.startswith("/") else text


def _button_state(f: PdfField) -> str:
    state = _state_name(f.value)
    if not state:
        for widget in f.widgets:
            appearance = _state_name(widget.get("/AS"))
            if appearance and appearance != "Off":
                return appearance
        return "Off"
    return state


def _from_options(state: str, options: list[tuple[str, str]]) -> str:
    # Radio kids may be named by index into /Opt; choices may hold the display text.
    if state.isdigit() and int(state) < len(options):
        return options[int(state)][0]
    for export, display in options:
        if state == display and state != export:
            return export
    return state


class _Reading:
    def __init__(self, schema: FormSchema) -> None:
        self.schema = schema
        self.index = LabelIndex(schema)
        self.values: dict[str, str] = {}
        self.unticked: set[str] = set()

    def field_id(self, f: PdfField) -> str | None:
        for candidate in (f.name, f.last_part, f.name.lower(), f.last_part.lower()):
            if candidate in self.schema:
                return candidate
        return self.index.match(f.last_part) or self.index.match(f.tooltip)

    def take(self, f: PdfField) -> None:
        field_id = self.field_id(f)
        if field_id is None or field_id in self.values:
            return
        spec = self.schema[field_id]
        if f.ftype == "/Btn":
            if f.flags & FF_PUSHBUTTON:
                return
            state = _button_state(f)
            on = state not in ("Off", "")
            if f.flags & FF_RADIO:
                value = _from_options(state, f.options) if on else ""
            elif spec.type == "yes_no":
                value = "yes" if on else "no"
                if not on:
                    self.unticked.add(field_id)
            else:
                value = _from_options(state, f.options) if on else ""
        elif f.ftype == "/Ch":
            value = _from_options(clean_text(_text(f.value)), f.options)
        else:
            value = _text(f.value)
        value = clean_text(value)
        if value:
            self.values[field_id] = value


def read_pdf(data: bytes, schema: FormSchema | None = None) -> dict[str, str]:
    """Field id -> raw text for every non-blank schema field of a filled PDF form.

    Check boxes read as "yes"/"no" (any on-state name is yes); radio groups and choice fields
    as their export value. Raises `FormUnreadable` for an encrypted PDF, even one that opens
    with an empty password (its content may have been hidden on purpose: a person should
    look), and for any file pypdf cannot parse.
    """
    reading = _Reading(schema or default_schema())
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise FormUnreadable("the PDF is encrypted")
        root = reader.trailer["/Root"].get_object()
        if isinstance(root, DictionaryObject):
            for f in iter_fields(root):
                reading.take(f)
    except FormUnreadable:
        raise
    except Exception as exc:
        # pypdf raises many kinds of error on a damaged file. The message names only the kind:
        # pypdf's own text can quote bytes from the file, which may be a child's details.
        raise FormUnreadable(f"the PDF could not be parsed ({type(exc).__name__})") from None
    return drop_untouched_boxes(reading.values, reading.unticked)


__all__ = ["PdfField", "iter_fields", "read_pdf"]
