"""The blank referral form, generated from the field schema as a fillable PDF and a Word file.

Nothing about the fields is written here: ids, labels, sections, choices and which fields are
mandatory all come from `rules/fields.toml`, so the published form and the readers cannot
drift apart. The PDF's AcroForm fields and the Word content controls are named by field id.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from xml.sax.saxutils import escape

import docx
from docx.enum.table import WD_ROW_HEIGHT_RULE, WD_TABLE_ALIGNMENT
from docx.oxml import parse_xml
from docx.oxml.ns import nsdecls
from docx.shared import Cm, Pt, RGBColor
from reportlab.lib.colors import Color, white
from reportlab.lib.pagesizes import A4
from reportlab.lib.utils import simpleSplit
from reportlab.pdfgen.canvas import Canvas

from cme_mailbot.schema import FieldSpec, FormSchema, default_schema

TITLE = "Children Missing Education (CME) referral form"
INTRO = (
    "Use this form to refer a child who is missing education to the council's Children "
    "Missing Education team. Fill it in on a computer, save it and email it back as a PDF "
    "or Word file: scanned, photographed or handwritten forms cannot be processed."
)
GUIDANCE = (
    "One child per form. Brothers and sisters each need their own form; you may send the "
    "forms together in one email.",
    "Child protection concerns must ALSO be reported to the MASH (Multi-Agency Safeguarding "
    "Hub) straight away, by telephone. Do not wait for a reply to this referral.",
    "Send the form only from your school's approved email address.",
    "Write dates as DD/MM/YYYY, for example 03/04/2015.",
    "Fields marked * must be completed. Some others are required in certain cases, as noted "
    "under their label.",
)
CLOSING = (
    "When you have finished, save the form and email it from your school's approved email "
    "address. If there are child protection concerns, you must also report them to the MASH "
    "by telephone now."
)
PDF_FILENAME = "cme-referral-form.pdf"
DOCX_FILENAME = "cme-referral-form.docx"
DATE_HINT = "DD/MM/YYYY"

# How many lines a free-text field offers. Presentation only, so it lives here rather than in
# the schema; any text field not listed gets one line.
TEXT_LINES = {
    "enquiries_made": 6,
    "safeguarding_details": 6,
    "siblings": 4,
    "destination_address": 3,
}
# Width of the field box in PDF points, by type; anything else spans the whole column.
_PDF_WIDTHS = {"date": 90.0, "upn": 150.0, "urn": 80.0, "uk_postcode": 100.0, "uk_phone": 160.0}


def _lines(spec: FieldSpec) -> int:
    return TEXT_LINES.get(spec.id, 1) if spec.type not in ("choice", "yes_no") else 1


def condition_hint(spec: FieldSpec, schema: FormSchema) -> str:
    """ "Required if “Reason for referral” is “Moved abroad”." for a C field, else ""."""
    if spec.when is None:
        return ""
    other = schema[spec.when.field]
    value = other.choice_label(spec.when.value)
    if other.type == "yes_no":
        value = "ticked" if spec.when.value == "yes" else "not ticked"
        return f"Required if “{other.label}” is {value}."
    return f"Required if “{other.label}” is “{value}”."


def label_text(spec: FieldSpec) -> str:
    return f"{spec.label} *" if spec.need == "M" else spec.label


def hints(spec: FieldSpec, schema: FormSchema, *, date: bool = True) -> list[str]:
    """Notes printed under a field's label: the date format, when a C field is required."""
    found = []
    if spec.type == "date" and date:
        found.append(DATE_HINT)
    if spec.when is not None:
        found.append(condition_hint(spec, schema))
    return found


# ---- PDF ----------------------------------------------------------------------------------

_PAGE_W, _PAGE_H = A4
_MARGIN = 42.0
_LABEL_W = 190.0
_FIELD_X = _MARGIN + _LABEL_W + 12.0
_FIELD_W = _PAGE_W - _MARGIN - _FIELD_X
_BOTTOM = _MARGIN + 18.0  # room for the footer
_LINE_H = 12.0
_FIELD_H = 18.0
_BOX = 13.0

_INK = Color(0.1, 0.1, 0.1)
_GREY = Color(0.35, 0.35, 0.35)
_HEADING_BG = Color(0.11, 0.27, 0.45)
_GUIDANCE_BG = Color(0.96, 0.94, 0.86)
_FIELD_BG = Color(0.93, 0.95, 1.0)
_FIELD_BORDER = Color(0.45, 0.5, 0.6)


class _PdfLayout:
    """Places the form's blocks top to bottom, starting a new page when a block won't fit."""

    def __init__(self, canvas: Canvas) -> None:
        self.c = canvas
        self.page = 1
        self.y = _PAGE_H - _MARGIN

    def footer(self) -> None:
        self.c.setFont("Helvetica", 8)
        self.c.setFillColor(_GREY)
        self.c.drawCentredString(_PAGE_W / 2, _MARGIN - 6, f"{TITLE} · page {self.page}")

    def need(self, height: float) -> None:
        if self.y - height < _BOTTOM:
            self.footer()
            self.c.showPage()
            self.page += 1
            self.y = _PAGE_H - _MARGIN

    def text_lines(
        self, x: float, lines: list[str], font: str, size: float, leading: float, colour: Color
    ) -> None:
        self.c.setFont(font, size)
        self.c.setFillColor(colour)
        y = self.y - size
        for line in lines:
            self.c.drawString(x, y, line)
            y -= leading

    def title(self) -> None:
        width = _PAGE_W - 2 * _MARGIN
        self.text_lines(_MARGIN, [TITLE], "Helvetica-Bold", 17, 20, _INK)
        self.y -= 28
        intro = simpleSplit(INTRO, "Helvetica", 9.5, width)
        self.text_lines(_MARGIN, intro, "Helvetica", 9.5, 12, _INK)
        self.y -= 12 * len(intro) + 8
        bullets = [simpleSplit(g, "Helvetica", 9, width - 28) for g in GUIDANCE]
        box_h = 10 + 16 + sum(11 * len(b) + 4 for b in bullets) + 4
        self.c.setFillColor(_GUIDANCE_BG)
        self.c.setStrokeColor(Color(0.8, 0.75, 0.55))
        self.c.rect(_MARGIN, self.y - box_h, width, box_h, stroke=1, fill=1)
        self.y -= 10
        self.text_lines(_MARGIN + 10, ["Before you start"], "Helvetica-Bold", 10, 12, _INK)
        self.y -= 16
        for lines in bullets:
            self.text_lines(_MARGIN + 12, ["•"], "Helvetica", 9, 11, _INK)
            font = "Helvetica-Bold" if "MASH" in lines[0] else "Helvetica"
            self.text_lines(_MARGIN + 24, lines, font, 9, 11, _INK)
            self.y -= 11 * len(lines) + 4
        self.y -= 4 + 14

    def closing(self) -> None:
        width = _PAGE_W - 2 * _MARGIN
        lines = simpleSplit(CLOSING, "Helvetica-Bold", 9.5, width - 20)
        box_h = 12 * len(lines) + 14
        self.need(box_h + 10)
        self.y -= 6
        self.c.setFillColor(_GUIDANCE_BG)
        self.c.setStrokeColor(Color(0.8, 0.75, 0.55))
        self.c.rect(_MARGIN, self.y - box_h, width, box_h, stroke=1, fill=1)
        self.y -= 7
        self.text_lines(_MARGIN + 10, lines, "Helvetica-Bold", 9.5, 12, _INK)
        self.y -= box_h

    def section(self, heading: str, first_row_h: float) -> None:
        self.need(22 + 8 + first_row_h)
        self.c.setFillColor(_HEADING_BG)
        self.c.rect(_MARGIN, self.y - 20, _PAGE_W - 2 * _MARGIN, 20, stroke=0, fill=1)
        self.c.setFillColor(white)
        self.c.setFont("Helvetica-Bold", 11)
        self.c.drawString(_MARGIN + 8, self.y - 14, heading)
        self.y -= 20 + 10

    def field(self, spec: FieldSpec, schema: FormSchema) -> None:
        label = simpleSplit(label_text(spec), "Helvetica", 9.5, _LABEL_W)
        notes = [
            ln for h in _pdf_notes(spec, schema) for ln in simpleSplit(h, "Helvetica", 8, _LABEL_W)
        ]
        self.need(_row_height(spec, schema))
        top = self.y
        self.text_lines(_MARGIN, label, "Helvetica", 9.5, 11.5, _INK)
        self.y -= 11.5 * len(label) + 1
        self.text_lines(_MARGIN, notes, "Helvetica-Oblique", 8, 10, _GREY)
        self.y = top
        self._widget(spec, schema)
        self.y = top - _row_height(spec, schema)

    def _widget(self, spec: FieldSpec, schema: FormSchema) -> None:
        form = self.c.acroForm
        tooltip = " ".join([spec.label, *hints(spec, schema)])
        style = {
            "borderColor": _FIELD_BORDER,
            "fillColor": _FIELD_BG,
            "textColor": _INK,
            "borderWidth": 1,
            "tooltip": tooltip,
            "name": spec.id,
        }
        if spec.type == "yes_no":
            form.checkbox(
                x=_FIELD_X,
                y=self.y - _BOX - 1,
                size=_BOX,
                buttonStyle="check",
                fieldFlags="",
                **style,
            )
            self.c.setFont("Helvetica", 9.5)
            self.c.setFillColor(_INK)
            self.c.drawString(_FIELD_X + _BOX + 6, self.y - 11, "Yes")
            self.c.setFont("Helvetica-Oblique", 8)
            self.c.setFillColor(_GREY)
            self.c.drawString(_FIELD_X + _BOX + 30, self.y - 11, "(leave unticked for no)")
            return
        if spec.type == "choice":
            # reportlab cannot make a combo box with no value, so the first option is a blank
            # whose export value is a space: it reads back as blank.
            options = [("", " "), *((c.label, c.id) for c in spec.choices)]
            form.choice(
                x=_FIELD_X,
                y=self.y - _FIELD_H,
                width=200,
                height=_FIELD_H,
                options=options,
                value=" ",
                fontName="Helvetica",
                fontSize=10,
                fieldFlags="combo",
                **style,
            )
            return
        lines = _lines(spec)
        height = _FIELD_H if lines == 1 else lines * _LINE_H + 6
        width = _PDF_WIDTHS.get(spec.type, _FIELD_W)
        form.textfield(
            x=_FIELD_X,
            y=self.y - height,
            width=width,
            height=height,
            value="",
            maxlen=0,
            fontName="Helvetica",
            fontSize=10,
            fieldFlags="multiline" if lines > 1 else "",
            **style,
        )
        if spec.type == "date":
            self.c.setFont("Helvetica-Oblique", 8)
            self.c.setFillColor(_GREY)
            self.c.drawString(_FIELD_X + width + 6, self.y - 12, DATE_HINT)


def _pdf_notes(spec: FieldSpec, schema: FormSchema) -> list[str]:
    return hints(spec, schema, date=False)  # the PDF prints the date format beside the box


def _row_height(spec: FieldSpec, schema: FormSchema) -> float:
    label = simpleSplit(label_text(spec), "Helvetica", 9.5, _LABEL_W)
    notes = [
        ln for h in _pdf_notes(spec, schema) for ln in simpleSplit(h, "Helvetica", 8, _LABEL_W)
    ]
    text_h = 11.5 * len(label) + 1 + 10 * len(notes)
    lines = _lines(spec)
    field_h = _FIELD_H if lines == 1 else lines * _LINE_H + 6
    return max(text_h, field_h) + 8


def _sections(schema: FormSchema) -> Iterator[tuple[str, tuple[FieldSpec, ...]]]:
    for section in schema.sections:
        fields = schema.in_section(section.id)
        if fields:
            yield f"{section.id}. {section.title}", fields


def blank_pdf(schema: FormSchema | None = None) -> bytes:
    """The fillable PDF form: A4, sections A-E, one AcroForm field per schema field."""
    schema = schema or default_schema()
    buffer = io.BytesIO()
    # invariant: no timestamp or random id, so the same schema gives the same bytes
    canvas = Canvas(buffer, pagesize=A4, invariant=1, pageCompression=1)
    canvas.setTitle(TITLE)
    canvas.setSubject("Children Missing Education referral")
    layout = _PdfLayout(canvas)
    layout.title()
    for heading, fields in _sections(schema):
        layout.section(heading, _row_height(fields[0], schema))
        for spec in fields:
            layout.field(spec, schema)
    layout.closing()
    layout.footer()
    canvas.showPage()
    canvas.save()
    return buffer.getvalue()


# ---- Word ---------------------------------------------------------------------------------

_PLACEHOLDER_TEXT = "Click or tap here to enter text."
_PLACEHOLDER_CHOICE = "Choose an item."
_GREY_RUN = '<w:rPr><w:color w:val="767676"/></w:rPr>'
_BOX_FONT = "MS Gothic"
_BOX_RPR = (
    f'<w:rPr><w:rFonts w:ascii="{_BOX_FONT}" w:eastAsia="{_BOX_FONT}" '
    f'w:hAnsi="{_BOX_FONT}" w:hint="eastAsia"/></w:rPr>'
)


def _attr(text: str) -> str:
    return escape(text, {'"': "&quot;"})


def sdt_xml(spec: FieldSpec, sdt_id: int) -> str:
    """The content control (w:sdt) for one field: plain text, check box or drop-down list."""
    head = (
        f"<w:sdt {nsdecls('w', 'w14')}><w:sdtPr>"
        f'<w:alias w:val="{_attr(spec.label)}"/><w:tag w:val="{_attr(spec.id)}"/>'
        f'<w:id w:val="{sdt_id}"/>'
    )
    if spec.type == "yes_no":
        return (
            f"{head.replace('<w:sdtPr>', '<w:sdtPr>' + _BOX_RPR)}"
            '<w14:checkbox><w14:checked w14:val="0"/>'
            f'<w14:checkedState w14:val="2612" w14:font="{_BOX_FONT}"/>'
            f'<w14:uncheckedState w14:val="2610" w14:font="{_BOX_FONT}"/>'
            "</w14:checkbox></w:sdtPr>"
            f"<w:sdtContent><w:r>{_BOX_RPR}<w:t>☐</w:t></w:r></w:sdtContent></w:sdt>"
        )
    if spec.type == "choice":
        items = f'<w:listItem w:displayText="{_PLACEHOLDER_CHOICE}" w:value=""/>' + "".join(
            f'<w:listItem w:displayText="{_attr(c.label)}" w:value="{_attr(c.id)}"/>'
            for c in spec.choices
        )
        return (
            f"{head}<w:showingPlcHdr/><w:dropDownList>{items}</w:dropDownList></w:sdtPr>"
            f"<w:sdtContent><w:r>{_GREY_RUN}<w:t>{_PLACEHOLDER_CHOICE}</w:t></w:r>"
            "</w:sdtContent></w:sdt>"
        )
    placeholder = DATE_HINT if spec.type == "date" else _PLACEHOLDER_TEXT
    multiline = ' w:multiLine="1"' if _lines(spec) > 1 else ""
    return (
        f"{head}<w:showingPlcHdr/><w:text{multiline}/></w:sdtPr>"
        f"<w:sdtContent><w:r>{_GREY_RUN}<w:t>{placeholder}</w:t></w:r></w:sdtContent></w:sdt>"
    )


def blank_docx(schema: FormSchema | None = None) -> bytes:
    """The Word form: each field a labelled table row holding a content control tagged by id."""
    schema = schema or default_schema()
    document = docx.Document()
    section = document.sections[0]
    section.page_width, section.page_height = Cm(21), Cm(29.7)
    for side in ("left_margin", "right_margin", "top_margin", "bottom_margin"):
        setattr(section, side, Cm(2))
    document.styles["Normal"].font.name = "Arial"
    document.styles["Normal"].font.size = Pt(10)
    document.core_properties.title = TITLE
    document.core_properties.author = ""

    document.add_heading(TITLE, level=0)
    document.add_paragraph(INTRO)
    document.add_heading("Before you start", level=2)
    for line in GUIDANCE:
        paragraph = document.add_paragraph(style="List Bullet")
        paragraph.add_run(line).bold = "MASH" in line

    sdt_id = 1000
    for heading, fields in _sections(schema):
        document.add_heading(heading, level=1)
        table = document.add_table(rows=0, cols=2)
        table.style = "Table Grid"
        table.alignment = WD_TABLE_ALIGNMENT.CENTER
        table.autofit = False
        for spec in fields:
            row = table.add_row()
            label_cell, value_cell = row.cells
            label_cell.width, value_cell.width = Cm(6.5), Cm(10.5)
            label_cell.paragraphs[0].add_run(label_text(spec)).bold = True
            for hint in hints(spec, schema):
                run = label_cell.add_paragraph().add_run(hint)
                run.italic = True
                run.font.size = Pt(8)
                run.font.color.rgb = RGBColor(0x59, 0x59, 0x59)
            sdt_id += 1
            paragraph = value_cell.paragraphs[0]
            paragraph._p.append(parse_xml(sdt_xml(spec, sdt_id)))
            if spec.type == "yes_no":
                paragraph.add_run(" Yes")
                note = paragraph.add_run("  (leave unticked for no)")
                note.italic = True
                note.font.size = Pt(8)
            if _lines(spec) > 1:
                row.height = Cm(0.5 * _lines(spec) + 0.2)
                row.height_rule = WD_ROW_HEIGHT_RULE.AT_LEAST
    document.add_paragraph()
    document.add_paragraph().add_run(CLOSING).bold = True
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def export_blank_forms(directory: Path) -> list[Path]:
    """Write the blank PDF and Word forms into `directory` (created if need be)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in ((PDF_FILENAME, blank_pdf()), (DOCX_FILENAME, blank_docx())):
        path = directory / name
        path.write_bytes(content)
        written.append(path)
    return written
