"""Reading a filled Word referral form into field id -> raw text.

A pure function of the file's bytes (it will run in a sandboxed child process). The ZIP container
is checked first (`container.py`); only its main document part is then unpacked and parsed.
Then content controls are read by their tag, the field id, as on the published form; then, for
fields still missing, label/value tables and "Label: value" paragraphs typed by hand, matched by
label or alias.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Any

import docx  # noqa: F401  (registers python-docx's element classes with its XML parser)
from docx.opc import phys_pkg, pkgreader
from docx.opc.constants import CONTENT_TYPE, RELATIONSHIP_TYPE
from docx.opc.packuri import PACKAGE_URI
from docx.oxml.ns import qn
from docx.oxml.parser import parse_xml

from cme_mailbot.forms import FormUnreadable
from cme_mailbot.forms.container import check_docx_container
from cme_mailbot.forms.labels import LabelIndex
from cme_mailbot.forms.values import clean_text, drop_untouched_boxes, read_tick_boxes
from cme_mailbot.schema import FormSchema, default_schema

W14_CHECKED = "{http://schemas.microsoft.com/office/word/2010/wordml}checked"
W14_CHECKBOX = "{http://schemas.microsoft.com/office/word/2010/wordml}checkbox"
W14_VAL = "{http://schemas.microsoft.com/office/word/2010/wordml}val"

# Placeholder texts of the published form and of Word itself. A control normally flags its
# placeholder with w:showingPlcHdr, but an editor that drops the flag must not turn
# "Click or tap here to enter text." into a child's name.
PLACEHOLDERS = frozenset(
    {
        "Click or tap here to enter text.",
        "Click here to enter text.",
        "Choose an item.",
        "Click or tap to enter a date.",
        "Click here to enter a date.",
        "DD/MM/YYYY",
    }
)

_LABEL_VALUE = re.compile(r"^([^:\t\n]{1,120}?)\s*(?::|\t)\s*(.*)$", re.DOTALL)
# An lxml element of the document tree (python-docx and lxml ship no type information).
_Element = Any
# python-docx's package-reading layer, which `docx.Document()` uses; it is not annotated.
_PhysPkgReader: Any = phys_pkg.PhysPkgReader
_PackageReader: Any = pkgreader.PackageReader
_ContentTypeMap: Any = pkgreader._ContentTypeMap

# Tag and attribute names in Clark notation, worked out once rather than per element. A comment
# or processing instruction has a function as its tag, which equals none of them.
_T = qn("w:t")
_TAB = qn("w:tab")
_BR = qn("w:br")
_CR = qn("w:cr")
_P = qn("w:p")
_SDT = qn("w:sdt")
_SDT_PR = qn("w:sdtPr")
_SDT_CONTENT = qn("w:sdtContent")
_SHOWING_PLACEHOLDER = qn("w:showingPlcHdr")
_TAG = qn("w:tag")
_VAL = qn("w:val")
_DROP_DOWN_LIST = qn("w:dropDownList")
_COMBO_BOX = qn("w:comboBox")
_LIST_ITEM = qn("w:listItem")
_DISPLAY_TEXT = qn("w:displayText")
_VALUE = qn("w:value")
_TBL = qn("w:tbl")
_TR = qn("w:tr")
_TC = qn("w:tc")
# Subtrees whose text is not visible text of the document.
_HIDDEN = frozenset(qn(f"w:{name}") for name in ("sdtPr", "rPr", "pPr", "delText", "instrText"))


def showing_placeholder(sdt: _Element) -> bool:
    pr = sdt.find(_SDT_PR)
    return pr is not None and pr.find(_SHOWING_PLACEHOLDER) is not None


def element_text(el: _Element) -> str:
    """The visible text under `el`: paragraphs as lines, w:br as line breaks, w:tab as tabs.

    Deleted text (w:delText) and controls still showing their placeholder count as nothing.
    """
    parts: list[str] = []
    _collect(el, parts)
    return "".join(parts).strip("\n")


def _collect(el: _Element, parts: list[str]) -> None:
    tag = el.tag
    if tag == _T:
        parts.append(el.text or "")
    elif tag == _TAB:
        parts.append("\t")
    elif tag in (_BR, _CR):
        parts.append("\n")
    elif tag in _HIDDEN or (tag == _SDT and showing_placeholder(el)):
        pass
    else:
        for child in el:
            _collect(child, parts)
        if tag == _P:
            parts.append("\n")


def _sdt_value(sdt: _Element) -> tuple[str, bool]:
    """(raw value, is an unticked check box) of one content control."""
    pr = sdt.find(_SDT_PR)
    content = sdt.find(_SDT_CONTENT)
    if pr is None:
        return "", False
    checkbox = pr.find(W14_CHECKBOX)
    if checkbox is not None:
        checked = checkbox.find(W14_CHECKED)
        on = checked is not None and (checked.get(W14_VAL) or "").lower() in ("1", "true", "on")
        return ("yes", False) if on else ("no", True)
    if pr.find(_SHOWING_PLACEHOLDER) is not None or content is None:
        return "", False
    text = clean_text(element_text(content))
    if text in PLACEHOLDERS:
        return "", False
    for listing in (pr.find(_DROP_DOWN_LIST), pr.find(_COMBO_BOX)):
        if listing is None:
            continue
        for item in listing.iter(_LIST_ITEM):
            display = item.get(_DISPLAY_TEXT)
            value = item.get(_VALUE)
            if value is not None and text == (display if display is not None else value):
                return value, False
    return text, False


def _rows(tbl: _Element) -> Iterator[_Element]:
    for child in tbl:
        if child.tag == _TR:
            yield child
        elif child.tag == _SDT:  # a repeating section wraps rows in a control
            content = child.find(_SDT_CONTENT)
            if content is not None:
                yield from (r for r in content if r.tag == _TR)


def _cells(tr: _Element) -> Iterator[_Element]:
    for child in tr:
        if child.tag == _TC:
            yield child
        elif child.tag == _SDT:
            content = child.find(_SDT_CONTENT)
            if content is not None:
                yield from (c for c in content if c.tag == _TC)


def _cell_text(tc: _Element) -> str:
    """The cell's paragraphs as lines of text, leaving out tables nested in it."""
    lines = [element_text(c) for c in tc if c.tag == _P or c.tag == _SDT]
    return clean_text("\n".join(lines))


_last_index: tuple[FormSchema, LabelIndex] | None = None


def _label_index(schema: FormSchema) -> LabelIndex:
    """The label index of `schema`, built once for the schema in use rather than per form."""
    global _last_index
    last = _last_index
    if last is not None and last[0] is schema:
        return last[1]
    index = LabelIndex(schema)
    _last_index = (schema, index)
    return index


class _Reading:
    def __init__(self, schema: FormSchema) -> None:
        self.schema = schema
        self.index = _label_index(schema)
        self.values: dict[str, str] = {}
        self.unticked: set[str] = set()
        self.controlled: set[str] = set()  # fields the form carries as tagged content controls

    def put(self, field_id: str, raw: str) -> None:
        if field_id in self.values:
            return
        value = clean_text(read_tick_boxes(clean_text(raw), self.schema[field_id]))
        if value and value not in PLACEHOLDERS:
            self.values[field_id] = value

    def content_controls(self, body: _Element) -> None:
        for sdt in body.iter(_SDT):
            pr = sdt.find(_SDT_PR)
            tag = pr.find(_TAG) if pr is not None else None
            field_id = tag.get(_VAL) if tag is not None else None
            if field_id is None or field_id not in self.schema:
                continue
            self.controlled.add(field_id)
            value, unticked = _sdt_value(sdt)
            if field_id not in self.values and value:
                self.values[field_id] = value
                if unticked:
                    self.unticked.add(field_id)

    def label_of(self, text: str) -> str | None:
        """The field a label cell names; tries the whole cell, then its first line."""
        field_id = self.index.match(text)
        if field_id is None and "\n" in text:
            field_id = self.index.match(text.split("\n", 1)[0])
        return field_id

    def wanted(self, field_id: str | None) -> bool:
        return (
            field_id is not None and field_id not in self.values and field_id not in self.controlled
        )

    def tables(self, body: _Element) -> None:
        """Label/value rows first, everywhere; then "Label: value" typed into a single cell."""
        loose: list[str] = []
        for tbl in body.iter(_TBL):
            for tr in _rows(tbl):
                loose += self.row([_cell_text(tc) for tc in _cells(tr)])
        for text in loose:
            self.label_value(text)

    def row(self, cells: list[str]) -> list[str]:
        """Read the row's label cells; return its other cells, which are neither label nor value.

        A label's value is the next non-empty cell, unless that is itself a label (the value
        was left blank). A cell taken as a value is never read as a label: prose such as
        "Date: 05/09 home visit" in an enquiries cell must not answer "Date of referral".
        """
        loose: list[str] = []
        taken: set[int] = set()
        for i, text in enumerate(cells):
            if i in taken or not text:
                continue
            field_id = self.label_of(text)
            if field_id is None:
                loose.append(text)
                continue
            for j in range(i + 1, len(cells)):
                if not cells[j]:
                    continue
                if self.label_of(cells[j]) is None:
                    taken.add(j)
                    if self.wanted(field_id):
                        self.put(field_id, cells[j])
                break
        return loose

    def label_value(self, text: str) -> None:
        match = _LABEL_VALUE.match(text)
        if match is None:
            return
        field_id = self.index.match(match.group(1))
        if field_id is not None and self.wanted(field_id) and match.group(2).strip():
            self.put(field_id, match.group(2))

    def paragraphs(self, body: _Element) -> None:
        for child in body:
            if child.tag == _P:
                self.label_value(clean_text(element_text(child)))


def _document_body(data: bytes) -> _Element:
    """The w:body of the package's main document part, as `docx.Document(...).element.body`.

    The main part is found and checked as python-docx finds and checks it (the one package
    relationship of type officeDocument, with the Word main-document content type) and parsed
    with python-docx's parser (no entity expansion, no network). Only [Content_Types].xml, the
    package relationships and that part are unpacked: the styles, settings, headers, images
    and other parts, which `docx.Document()` would also unpack and parse, are never read.
    """
    reader = _PhysPkgReader(io.BytesIO(data))
    try:
        content_types = _ContentTypeMap.from_xml(reader.content_types_xml)
        # Keyed by id, as python-docx keeps them: a repeated id replaces the earlier one.
        by_id = {rel.rId: rel for rel in _PackageReader._srels_for(reader, PACKAGE_URI)}
        main = [rel for rel in by_id.values() if rel.reltype == RELATIONSHIP_TYPE.OFFICE_DOCUMENT]
        if not main:
            raise KeyError("no officeDocument relationship")
        if len(main) > 1:
            raise ValueError("several officeDocument relationships")
        partname = main[0].target_partname  # ValueError for an external target
        if content_types[partname] != CONTENT_TYPE.WML_DOCUMENT_MAIN:
            raise ValueError("the main part is not a Word document")
        document: _Element = parse_xml(reader.blob_for(partname))
    finally:
        reader.close()
    return document.body  # AttributeError unless the root is w:document


def read_docx(data: bytes, schema: FormSchema | None = None) -> dict[str, str]:
    """Field id -> raw text for every non-blank schema field of a filled Word form.

    Raises `FormUnreadable` for a container that fails the checks in `container.py` and for
    any file whose main document part python-docx cannot find, unpack or parse. Other parts
    (styles, settings, images...) are not read, so damage confined to them goes unnoticed.
    """
    check_docx_container(data)
    reading = _Reading(schema or default_schema())
    try:
        body = _document_body(data)
        reading.content_controls(body)
        if len(reading.controlled) < len(reading.schema.fields):
            # Only fields the form does not carry as controls are looked for by label.
            reading.tables(body)
            reading.paragraphs(body)
    except FormUnreadable:
        raise
    except Exception as exc:
        # The message names only the kind of error: lxml and python-docx quote document text.
        raise FormUnreadable(f"the Word file could not be parsed ({type(exc).__name__})") from None
    return drop_untouched_boxes(reading.values, reading.unticked)
