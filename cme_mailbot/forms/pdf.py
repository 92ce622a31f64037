"""Reading a filled PDF referral form's AcroForm fields into field id -> raw text.

A pure function of the file's bytes (it runs in a sandboxed child process). pikepdf, the Python
binding of qpdf (C++), reads the form: reading was the CPU hot spot, and qpdf reads the
published form, filled in, in ~3.5 ms where pypdf's pure-Python parser took ~16 ms. qpdf is
also fuzzed continuously in OSS-Fuzz. Fields are found by name (the schema id, or a hierarchical
name whose last part is the id), or failing that by a name or tooltip that is one of the
field's labels.

Encrypted PDFs raise `FormUnreadable`, and so do damaged ones. qpdf quietly repairs a damaged
file (a truncated form, a broken cross-reference table, a stream it cannot decode) and says so
only in warnings; a form read from a repaired file may have lost fields or values, or the whole
form, so any warning makes the file unreadable and a person looks at it. The one exception is a
file whose /AcroForm plainly has no fields, which is not a form. qpdf's default parser limits
(nesting depth, container sizes) are kept, and decoded streams are capped as pypdf's were.

pypdf still writes forms (`cme_mailbot.forms.fill`, `.export`); `iter_fields` and `PdfField`
walk a pypdf document for that.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

import pikepdf
from pikepdf.settings import set_qpdf_limits
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
_INHERITED = ("/FT", "/Ff", "/V", "/Opt")  # PDF 32000-1, table 220 and 222


# pypdf, which read forms before, inflated no stream past 75 MB; qpdf has no such limit by
# default. A form's object and cross-reference streams are a few kilobytes. qpdf's limits are
# process-wide (nothing else here uses pikepdf); a stream over the limit is damage (a warning).
_MAX_DECODED_BYTES = 75_000_000
set_qpdf_limits(
    flate_max_memory=_MAX_DECODED_BYTES,
    png_max_memory=_MAX_DECODED_BYTES,
    run_length_max_memory=_MAX_DECODED_BYTES,
    tiff_max_memory=_MAX_DECODED_BYTES,
)


def _last_part(name: str) -> str:
    return _INDEX_SUFFIX.sub("", name.rsplit(".", 1)[-1])


# ---- reading (pikepdf) -----------------------------------------------------------------------


@dataclass
class _Field:
    """One terminal field as read by pikepdf, inherited attributes resolved, reduced to text."""

    name: str  # fully qualified, parts joined by "."
    tooltip: str
    ftype: str | None  # "/Tx", "/Btn", "/Ch"...
    flags: int
    value: str  # /V as text (a name keeps its slash; an array is joined with ", ")
    options: list[tuple[str, str]]  # (export value, display text)
    appearances: list[str]  # each widget's /AS as text

    @property
    def last_part(self) -> str:
        return _last_part(self.name)


def _get(obj: pikepdf.Object, key: str) -> object:
    """`obj.get(key)`, but quicker for a key that is absent (pikepdf's `get` then costs ~2 us)."""
    return obj[key] if key in obj else None  # noqa: SIM401 - see above


def _text(value: object, depth: int = 0) -> str:
    if value is None or isinstance(value, (pikepdf.Dictionary, pikepdf.Stream)):
        return ""
    if isinstance(value, pikepdf.Array):
        if depth >= _MAX_DEPTH:
            raise FormUnreadable("the PDF is nested too deeply to read")
        return ", ".join(_text(v, depth + 1) for v in value)
    return str(value)


def _options(opt: object) -> list[tuple[str, str]]:
    if not isinstance(opt, pikepdf.Array):
        return []
    pairs: list[tuple[str, str]] = []
    for item in opt:
        if isinstance(item, pikepdf.Array) and len(item) >= 2:
            pairs.append((_text(item[0], 1), _text(item[1], 1)))
        elif item is not None:
            text = _text(item)
            pairs.append((text, text))
    return pairs


def _fields(root: object) -> Iterator[_Field]:
    """Every terminal field under a document catalog's /AcroForm, guarding against cycles."""
    if not isinstance(root, pikepdf.Dictionary):
        return
    acro_form = _get(root, "/AcroForm")
    if not isinstance(acro_form, pikepdf.Dictionary):
        return
    fields = _get(acro_form, "/Fields")
    if not isinstance(fields, pikepdf.Array):
        return
    seen: set[tuple[int, int]] = set()
    for node in fields:
        yield from _walk(node, "", {}, 0, seen)


def _walk(
    node: object,
    parent_name: str,
    inherited: dict[str, object],
    depth: int,
    seen: set[tuple[int, int]],
) -> Iterator[_Field]:
    # pikepdf makes a new wrapper on every access, so objects are told apart by their object
    # number. A direct object (objgen (0, 0)) is written inside its parent and cannot recur.
    if not isinstance(node, pikepdf.Dictionary) or depth > _MAX_DEPTH:
        return
    if node.is_indirect:
        if node.objgen in seen:
            return
        seen.add(node.objgen)
    title = _get(node, "/T")
    name = parent_name
    if title is not None:
        name = f"{parent_name}.{_text(title)}" if parent_name else _text(title)
    attrs = dict(inherited)
    for key in _INHERITED:
        if key in node:
            attrs[key] = node[key]
    kids = _get(node, "/Kids")
    kid_objs = list(kids) if isinstance(kids, pikepdf.Array) else []
    child_fields = [k for k in kid_objs if isinstance(k, pikepdf.Dictionary) and "/T" in k]
    if child_fields:
        for kid in child_fields:
            yield from _walk(kid, name, attrs, depth + 1, seen)
        return
    widgets = [k for k in kid_objs if isinstance(k, pikepdf.Dictionary)] or [node]
    ftype = attrs.get("/FT")
    flags = attrs.get("/Ff")
    yield _Field(
        name=name,
        tooltip=_text(_get(node, "/TU")),
        ftype=str(ftype) if ftype is not None else None,
        # An integer reads as int (conversion_mode="implicit"); true/false as bool, not a flag.
        flags=flags if isinstance(flags, int) and not isinstance(flags, bool) else 0,
        value=_text(attrs.get("/V")),
        options=_options(attrs.get("/Opt")),
        appearances=[_text(_get(w, "/AS")) for w in widgets],
    )


def _declares_no_fields(root: object) -> bool:
    """Whether a catalog's /AcroForm is a dictionary whose /Fields is an empty array.

    The one damaged PDF that is plainly not a form. Anything else damaged may have lost
    fields, or the whole form: qpdf reads an object it cannot find or parse as null, and a
    dictionary entry whose value is null as absent, so a damaged PDF without an /AcroForm may
    well have had one.
    """
    if not isinstance(root, pikepdf.Dictionary):
        return False
    acro_form = _get(root, "/AcroForm")
    if not isinstance(acro_form, pikepdf.Dictionary):
        return False
    fields = _get(acro_form, "/Fields")
    return isinstance(fields, pikepdf.Array) and len(fields) == 0


def _state_name(text: str) -> str:
    """A button state such as /Yes or /Off, without the slash; "" if none."""
    text = text.strip()
    return text[1:] if text.startswith("/") else text


def _button_state(f: _Field) -> str:
    state = _state_name(f.value)
    if not state:
        for appearance in map(_state_name, f.appearances):
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
        self.values: dict[str, str] = {}
        self.unticked: set[str] = set()

    @cached_property
    def index(self) -> LabelIndex:
        """Built only for a form with a field not named by its id (~0.6 ms)."""
        return LabelIndex(self.schema)

    def field_id(self, f: _Field) -> str | None:
        for candidate in (f.name, f.last_part, f.name.lower(), f.last_part.lower()):
            if candidate in self.schema:
                return candidate
        return self.index.match(f.last_part) or self.index.match(f.tooltip)

    def take(self, f: _Field) -> None:
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
            value = _from_options(clean_text(f.value), f.options)
        else:
            value = f.value
        value = clean_text(value)
        if value:
            self.values[field_id] = value


def read_pdf(data: bytes, schema: FormSchema | None = None) -> dict[str, str]:
    """Field id -> raw text for every non-blank schema field of a filled PDF form.

    Check boxes read as "yes"/"no" (any on-state name is yes); radio groups and choice fields
    as their export value. Raises `FormUnreadable` for an encrypted PDF, even one that opens
    with an empty password (its content may have been hidden on purpose: a person should
    look), for any file qpdf cannot parse, and for any file qpdf had to repair, unless its
    /AcroForm declares no fields (an empty /Fields array): that reads as {}, not a form.
    """
    reading = _Reading(schema or default_schema())
    try:
        with pikepdf.open(
            io.BytesIO(data),
            suppress_warnings=True,  # qpdf's warnings quote the file; they are only counted
            inherit_page_attributes=False,  # the pages are not read: do not walk their tree
            conversion_mode="implicit",  # numbers as int, null as None
        ) as pdf:
            if pdf.is_encrypted:
                raise FormUnreadable("the PDF is encrypted")
            root = _get(pdf.trailer, "/Root")
            for f in _fields(root):
                reading.take(f)
            # qpdf repairs a damaged file quietly and says so only in warnings (checked after
            # reading: objects are parsed, and found damaged, as they are first used).
            if pdf.get_warnings() and not _declares_no_fields(root):
                raise FormUnreadable("the PDF is damaged (it could only be read by repairing it)")
    except FormUnreadable:
        raise
    except pikepdf.PasswordError:
        raise FormUnreadable("the PDF is encrypted") from None
    except Exception as exc:
        # qpdf raises many kinds of error on a damaged file. The message names only the kind:
        # qpdf's own text can quote bytes from the file, which may be a child's details.
        raise FormUnreadable(f"the PDF could not be parsed ({type(exc).__name__})") from None
    return drop_untouched_boxes(reading.values, reading.unticked)


# ---- walking a form to write it (pypdf) ------------------------------------------------------


@dataclass
class PdfField:
    """One terminal field of a pypdf AcroForm, with inherited attributes resolved.

    `cme_mailbot.forms.fill` fills forms through these; reading uses pikepdf (`read_pdf`).
    """

    name: str  # fully qualified, parts joined by "."
    obj: DictionaryObject
    ftype: str | None
    flags: int
    value: PdfObject | None
    options: list[tuple[str, str]]  # (export value, display text)
    widgets: list[DictionaryObject] = field(default_factory=list)

    @property
    def last_part(self) -> str:
        return _last_part(self.name)

    @property
    def tooltip(self) -> str:
        tu = self.obj.get("/TU")
        return str(tu) if tu is not None else ""


def _pypdf_options(opt: PdfObject | None) -> list[tuple[str, str]]:
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
    """Every terminal field under a pypdf document catalog's /AcroForm, guarding against cycles."""
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
        yield from _pypdf_walk(node, "", {}, 0, seen)


def _pypdf_walk(
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
    for key in _INHERITED:
        if key in obj:
            attrs[key] = obj[key]
    kids = obj.get("/Kids")
    kids = kids.get_object() if kids is not None else None
    kid_objs = [k.get_object() for k in kids] if isinstance(kids, ArrayObject) else []
    child_fields = [k for k in kid_objs if isinstance(k, DictionaryObject) and "/T" in k]
    if child_fields:
        for kid in child_fields:
            yield from _pypdf_walk(kid, name, attrs, depth + 1, seen)
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
        options=_pypdf_options(opt.get_object() if opt is not None else None),
        widgets=widgets,
    )


__all__ = ["FF_PUSHBUTTON", "FF_RADIO", "PdfField", "iter_fields", "read_pdf"]
