"""Reading a filled Word referral form into field id -> raw text.

A pure function of the file's bytes (it will run in a sandboxed child process). The ZIP container
is checked first (`container.py`). Then content controls are read by their tag, the field id,
as on the published form; then, for fields still missing, label/value tables and
"Label: value" paragraphs typed by hand, matched by label or alias.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Any

import docx
from docx.oxml.ns import qn

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


def _tag(el: _Element) -> str:
    return el.tag if isinstance(el.tag, str) else ""


def showing_placeholder(sdt: _Element) -> bool:
    pr = sdt.find(qn("w:sdtPr"))
    return pr is not None and pr.find(qn("w:showingPlcHdr")) is not None


def element_text(el: _Element) -> str:
    """The visible text under `el`: paragraphs as lines, w:br as line breaks, w:tab as tabs.

    Deleted text (w:delText) and controls still showing their placeholder count as nothing.
    """
    parts: list[str] = []
    _collect(el, parts)
    return "".join(parts).strip("\n")


def _collect(el: _Element, parts: list[str]) -> None:
    tag = _tag(el)
    if tag == qn("w:t"):
        parts.append(el.text or "")
        return
    if tag == qn("w:tab"):
        parts.append("\t")
        return
    if tag in (qn("w:br"), qn("w:cr")):
        parts.append("\n")
        return
    if tag in (qn("w:sdtPr"), qn("w:rPr"), qn("w:pPr"), qn("w:delText"), qn("w:instrText")):
        return
    if tag == qn("w:sdt") and showing_placeholder(el):
        return
    for child in el:
        _collect(child, parts)
    if tag == qn("w:p"):
        parts.append("\n")


def _sdt_value(sdt: _Element) -> tuple[str, bool]:
    """(raw value, is an unticked check box) of one content control."""
    pr = sdt.find(qn("w:sdtPr"))
    content = sdt.find(qn("w:sdtContent"))
    if pr is None:
        return "", False
    checkbox = pr.find(W14_CHECKBOX)
    if checkbox is not None:
        checked = checkbox.find(W14_CHECKED)
        on = checked is not None and (checked.get(W14_VAL) or "").lower() in ("1", "true", "on")
        return ("yes", False) if on else ("no", True)
    if pr.find(qn("w:showingPlcHdr")) is not None or content is None:
        return "", False
    text = clean_text(element_text(content))
    if text in PLACEHOLDERS:
        return "", False
    for listing in (pr.find(qn("w:dropDownList")), pr.find(qn("w:comboBox"))):
        if listing is None:
            continue
        for item in listing.iter(qn("w:listItem")):
            display = item.get(qn("w:displayText"))
            value = item.get(qn("w:value"))
            if value is not None and text == (display if display is not None else value):
                return value, False
    return text, False


def _rows(tbl: _Element) -> Iterator[_Element]:
    for child in tbl:
        if _tag(child) == qn("w:tr"):
            yield child
        elif _tag(child) == qn("w:sdt"):  # a repeating section wraps rows in a control
            content = child.find(qn("w:sdtContent"))
            if content is not None:
                yield from (r for r in content if _tag(r) == qn("w:tr"))


def _cells(tr: _Element) -> Iterator[_Element]:
    for child in tr:
        if _tag(child) == qn("w:tc"):
            yield child
        elif _tag(child) == qn("w:sdt"):
            content = child.find(qn("w:sdtContent"))
            if content is not None:
                yield from (c for c in content if _tag(c) == qn("w:tc"))


def _cell_text(tc: _Element) -> str:
    """The cell's paragraphs as lines of text, leaving out tables nested in it."""
    lines = [element_text(c) for c in tc if _tag(c) in (qn("w:p"), qn("w:sdt"))]
    return clean_text("\n".join(lines))


class _Reading:
    def __init__(self, schema: FormSchema) -> None:
        self.schema = schema
        self.index = LabelIndex(schema)
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
        for sdt in body.iter(qn("w:sdt")):
            pr = sdt.find(qn("w:sdtPr"))
            tag = pr.find(qn("w:tag")) if pr is not None else None
            field_id = tag.get(qn("w:val")) if tag is not None else None
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
        for tbl in body.iter(qn("w:tbl")):
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
            if _tag(child) == qn("w:p"):
                self.label_value(clean_text(element_text(child)))


def read_docx(data: bytes, schema: FormSchema | None = None) -> dict[str, str]:
    """Field id -> raw text for every non-blank schema field of a filled Word form.

    Raises `FormUnreadable` for a container that fails the checks in `container.py` and for
    any file python-docx cannot open.
    """
    check_docx_container(data)
    reading = _Reading(schema or default_schema())
    try:
        document = docx.Document(io.BytesIO(data))
        body = document.element.body
        reading.content_controls(body)
        reading.tables(body)
        reading.paragraphs(body)
    except FormUnreadable:
        raise
    except Exception as exc:
        # The message names only the kind of error: lxml and python-docx quote document text.
        raise FormUnreadable(f"the Word file could not be parsed ({type(exc).__name__})") from None
    return drop_untouched_boxes(reading.values, reading.unticked)
