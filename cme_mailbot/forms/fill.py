"""Filling in referral forms as a school would: for tests and the demo, never for production.

`fill_pdf` and `fill_docx` fill the published blank forms (or another template) by field id;
`handmade_docx` types a plain label/value table with no content controls, as a school that
retyped the form in Word might.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import docx
from docx.oxml import OxmlElement
from docx.oxml.ns import qn
from pypdf import PdfReader, PdfWriter
from pypdf.generic import DictionaryObject, NameObject

from cme_mailbot.forms.docx import W14_CHECKBOX, W14_CHECKED, W14_VAL
from cme_mailbot.forms.export import blank_docx, blank_pdf
from cme_mailbot.forms.pdf import FF_PUSHBUTTON, FF_RADIO, PdfField, iter_fields
from cme_mailbot.forms.values import TICKED, UNTICKED

# A complete, plausible referral (fictional child; the UPN's check letter is right).
EXAMPLE_VALUES: Mapping[str, str] = {
    "child_first_name": "Amelia",
    "child_last_name": "Hartley",
    "child_dob": "14/03/2014",
    "child_gender": "female",
    "upn": "B873200115001",
    "year_group": "year_6",
    "address_line1": "12 Willow Close",
    "town": "Northbridge",
    "postcode": "NB1 4QT",
    "parent1_name": "Claire Hartley",
    "parent1_relationship": "Mother",
    "parent1_phone": "07700 900123",
    "school_name": "Northbridge Primary School",
    "school_urn": "123456",
    "referrer_name": "Sam Okafor",
    "referrer_role": "Attendance Officer",
    "referrer_phone": "01632 960111",
    "referrer_email": "attendance@northbridge-primary.example.sch.uk",
    "referral_date": "02/10/2024",
    "date_last_attended": "19/07/2024",
    "reason": "no_longer_at_address",
    "enquiries_made": (
        "05/09/2024 home visit by EWO: house empty, neighbour says family moved in August.\n"
        "09/09/2024 phoned mother and father: numbers unobtainable.\n"
        "16/09/2024 checked with GP and health visitor: no new address."
    ),
    "enquiries_completed_date": "30/09/2024",
    "ewo_consulted": "yes",
    "ewo_name": "Jo Bennett",
    "electively_home_educated": "no",
    "in_admissions_process": "no",
    "child_protection_concern": "no",
}


# ---- PDF ----------------------------------------------------------------------------------


def _on_states(f: PdfField) -> list[str]:
    states: list[str] = []
    for widget in f.widgets:
        ap = widget.get("/AP")
        normal = ap.get_object().get("/N") if ap is not None else None
        normal = normal.get_object() if normal is not None else None
        if isinstance(normal, DictionaryObject):
            states += [str(k) for k in normal if str(k) != "/Off" and str(k) not in states]
    return states


def _set_button(f: PdfField, value: str) -> None:
    if f.flags & FF_PUSHBUTTON:
        raise ValueError(f"field {f.name!r} is a push button")
    if f.flags & FF_RADIO:
        state = "/" + value
        if state not in _on_states(f):
            raise ValueError(f"radio group {f.name!r} has no option {value!r}")
    elif value in ("yes", "no"):
        state = (_on_states(f) or ["/Yes"])[0] if value == "yes" else "/Off"
    else:
        raise ValueError(f"check box {f.name!r} takes 'yes' or 'no'")
    f.obj[NameObject("/V")] = NameObject(state)
    for widget in f.widgets:
        ap = widget.get("/AP")
        normal = ap.get_object().get("/N") if ap is not None else None
        has_state = normal is not None and state in normal.get_object()
        widget[NameObject("/AS")] = NameObject(state if has_state else "/Off")


def fill_pdf(values: Mapping[str, str], template: bytes | None = None) -> bytes:
    """Fill a PDF form (the published blank form by default) by field id or full name.

    Text and choice fields take their text (choices by id); check boxes "yes" or "no"; radio
    groups the name of the option. NeedAppearances is set so viewers redraw the values.
    Raises ValueError for a key that names no field.
    """
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(template or blank_pdf())))
    fields = list(iter_fields(writer.root_object))
    texts: dict[str, str] = {}
    for key, value in values.items():
        f = next((f for f in fields if key in (f.name, f.last_part)), None)
        if f is None:
            raise ValueError(f"the form has no field {key!r}")
        if f.ftype == "/Btn":
            _set_button(f, value)
        else:
            texts[f.name] = value
    if texts:
        writer.update_page_form_field_values(None, texts, auto_regenerate=True)
    writer.set_need_appearances_writer(True)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


# ---- Word ---------------------------------------------------------------------------------


def _fill_control(sdt: Any, value: str) -> None:
    pr = sdt.find(qn("w:sdtPr"))
    content = sdt.find(qn("w:sdtContent"))
    if pr is None or content is None:
        raise ValueError("malformed content control")
    checkbox = pr.find(W14_CHECKBOX)
    if checkbox is not None:
        if value not in ("yes", "no"):
            raise ValueError("a check box takes 'yes' or 'no'")
        checked = checkbox.find(W14_CHECKED)
        if checked is None:
            checked = OxmlElement("w14:checked")
            checkbox.insert(0, checked)
        checked.set(W14_VAL, "1" if value == "yes" else "0")
        for t in content.iter(qn("w:t")):
            t.text = TICKED[0] if value == "yes" else UNTICKED
        return
    listing = pr.find(qn("w:dropDownList"))
    if listing is None:
        listing = pr.find(qn("w:comboBox"))
    display = value
    if listing is not None:
        for item in listing.iter(qn("w:listItem")):
            if value in (item.get(qn("w:value")), item.get(qn("w:displayText"))):
                display = item.get(qn("w:displayText")) or item.get(qn("w:value")) or value
                break
        else:
            if listing.tag == qn("w:dropDownList"):
                raise ValueError(f"the drop-down list has no item {value!r}")
    for placeholder in pr.findall(qn("w:showingPlcHdr")):
        pr.remove(placeholder)
    block = any(child.tag == qn("w:p") for child in content)
    for child in list(content):
        content.remove(child)
    run = OxmlElement("w:r")
    run.text = display  # python-docx turns \n into w:br and \t into w:tab
    if block:
        paragraph = OxmlElement("w:p")
        paragraph.append(run)
        content.append(paragraph)
    else:
        content.append(run)


def fill_docx(values: Mapping[str, str], template: bytes | None = None) -> bytes:
    """Fill the content controls of a Word form (the published blank form by default) by tag.

    Text controls take their text; check boxes "yes" or "no"; drop-down lists an item's value
    (the choice id) or display text. Raises ValueError for a key that names no control.
    """
    document = docx.Document(io.BytesIO(template or blank_docx()))
    controls: dict[str, Any] = {}
    for sdt in document.element.body.iter(qn("w:sdt")):
        tag = sdt.find(f"{qn('w:sdtPr')}/{qn('w:tag')}")
        if tag is not None and tag.get(qn("w:val")):
            controls.setdefault(str(tag.get(qn("w:val"))), sdt)
    for key, value in values.items():
        if key not in controls:
            raise ValueError(f"the form has no content control tagged {key!r}")
        _fill_control(controls[key], value)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def handmade_docx(
    rows: Sequence[Sequence[str]],
    heading: str | None = None,
    paragraphs: Sequence[str] = (),
) -> bytes:
    """A plain Word document as a school might type it: a table of label and value cells.

    Rows usually have two cells, but may have more (or fewer) and need not be referral fields;
    `heading` goes above the table and `paragraphs` (e.g. "Postcode: NB1 4QT") below it.
    """
    document = docx.Document()
    if heading:
        document.add_heading(heading, level=1)
    if rows:
        table = document.add_table(rows=0, cols=max(len(row) for row in rows))
        table.style = "Table Grid"
        for row in rows:
            for cell, text in zip(table.add_row().cells, row, strict=False):
                cell.text = text
    for text in paragraphs:
        document.add_paragraph(text)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()
