"""The blank forms are generated from the schema, laid out for people, and read back exactly."""

from __future__ import annotations

import io
import shutil
import subprocess
from functools import cache
from pathlib import Path

import docx
import pytest
from docx.oxml.ns import qn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pypdf import PdfReader

from cme_mailbot.forms import read_form
from cme_mailbot.forms.docx import W14_CHECKBOX, read_docx
from cme_mailbot.forms.export import (
    DOCX_FILENAME,
    PDF_FILENAME,
    TEXT_LINES,
    TITLE,
    blank_docx,
    blank_pdf,
    export_blank_forms,
)
from cme_mailbot.forms.fill import EXAMPLE_VALUES, fill_docx, fill_pdf
from cme_mailbot.forms.pdf import FF_RADIO, iter_fields, read_pdf
from cme_mailbot.schema import FieldSpec, default_schema, parse_schema

SCHEMA = default_schema()
FF_MULTILINE = 1 << 12
FF_COMBO = 1 << 17


@cache
def pdf_template() -> bytes:
    return blank_pdf()


@cache
def docx_template() -> bytes:
    return blank_docx()


def sample_value(spec: FieldSpec, variant: int = 0) -> str:
    """A distinct value of the right kind for every field (the readers do not validate)."""
    if spec.type == "yes_no":
        return ("yes", "no")[variant % 2]
    if spec.type == "choice":
        return spec.choices[variant % len(spec.choices)].id
    if spec.type == "date":
        return f"{(variant % 27) + 1:02d}/03/2015"
    if spec.id in TEXT_LINES:
        return f"First line of {spec.id}\nSecond line, with “quotes” & <angles>"
    return f"{spec.label[:20]} Zoë O'Brien-Łukasz {variant}"


def every_field(variant: int = 0) -> dict[str, str]:
    return {spec.id: sample_value(spec, variant) for spec in SCHEMA.fields}


def pdf_fields(data: bytes) -> dict[str, object]:
    root = PdfReader(io.BytesIO(data)).trailer["/Root"].get_object()
    return {f.name: f for f in iter_fields(root)}


# ---- the PDF ------------------------------------------------------------------------------


def test_blank_pdf_has_one_acroform_field_per_schema_field_named_by_id() -> None:
    fields = pdf_fields(pdf_template())
    assert sorted(fields) == sorted(SCHEMA.ids)


def test_blank_pdf_field_kinds_follow_the_schema_types() -> None:
    fields = {f.name: f for f in iter_fields(PdfReader(io.BytesIO(pdf_template())).root_object)}
    for spec in SCHEMA.fields:
        f = fields[spec.id]
        if spec.type == "yes_no":
            assert f.ftype == "/Btn" and not f.flags & FF_RADIO
            states = f.widgets[0]["/AP"]["/N"]
            assert "/Off" in states and len(states) == 2
        elif spec.type == "choice":
            assert f.ftype == "/Ch" and f.flags & FF_COMBO
            real = [(export, display) for export, display in f.options if export.strip()]
            assert real == [(c.id, c.label) for c in spec.choices]
        else:
            assert f.ftype == "/Tx"
            assert bool(f.flags & FF_MULTILINE) == (spec.id in TEXT_LINES), spec.id
            assert "/MaxLen" not in f.obj


def test_blank_pdf_is_a4_with_title_sections_and_guidance() -> None:
    reader = PdfReader(io.BytesIO(pdf_template()))
    for page in reader.pages:
        assert (round(float(page.mediabox.width)), round(float(page.mediabox.height))) == (595, 842)
    text = " ".join(" ".join((page.extract_text() or "").split()) for page in reader.pages)
    assert TITLE in text
    for section in SCHEMA.sections:
        assert f"{section.id}. {section.title}" in text
    for spec in SCHEMA.fields:
        assert " ".join(spec.label.split()) in text
    for phrase in (
        "One child per form",
        "each need their own form",
        "must ALSO be reported to the MASH",
        "approved email address",
        "DD/MM/YYYY",
        "Required if “Reason for referral” is “Moved abroad”",
    ):
        assert phrase in text, phrase


def test_blank_pdf_is_deterministic() -> None:
    assert blank_pdf() == pdf_template()


def test_blank_pdf_follows_a_different_schema() -> None:
    schema = parse_schema(
        {
            "sections": [{"id": "A", "title": "Only"}],
            "fields": [
                {"id": "alpha", "section": "A", "label": "Alpha", "type": "text", "need": "M"},
                {"id": "beta", "section": "A", "label": "Beta", "type": "yes_no", "need": "O"},
            ],
        }
    )
    assert sorted(pdf_fields(blank_pdf(schema))) == ["alpha", "beta"]
    document = docx.Document(io.BytesIO(blank_docx(schema)))
    tags = [t.get(qn("w:val")) for t in document.element.body.iter(qn("w:tag"))]
    assert tags == ["alpha", "beta"]


@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="poppler-utils not installed")
def test_blank_pdf_renders(tmp_path: Path) -> None:
    (tmp_path / "form.pdf").write_bytes(pdf_template())
    subprocess.run(
        ["pdftoppm", "-r", "40", "-png", "-f", "1", "-l", "1", "form.pdf", "page"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=60,
    )
    (png,) = tmp_path.glob("page*.png")
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 5000


# ---- the Word form -------------------------------------------------------------------------


def controls(data: bytes) -> dict[str, object]:
    body = docx.Document(io.BytesIO(data)).element.body
    found: dict[str, object] = {}
    for sdt in body.iter(qn("w:sdt")):
        tag = sdt.find(f"{qn('w:sdtPr')}/{qn('w:tag')}")
        assert tag is not None
        found[tag.get(qn("w:val"))] = sdt
    return found


def test_blank_docx_has_one_content_control_per_field_tagged_and_aliased() -> None:
    found = controls(docx_template())
    assert sorted(found) == sorted(SCHEMA.ids)
    for spec in SCHEMA.fields:
        pr = found[spec.id].find(qn("w:sdtPr"))  # type: ignore[attr-defined]
        assert pr.find(qn("w:alias")).get(qn("w:val")) == spec.label
        if spec.type == "yes_no":
            assert pr.find(W14_CHECKBOX) is not None
            assert "☐" in "".join(t.text for t in found[spec.id].iter(qn("w:t")))  # type: ignore[attr-defined]
        elif spec.type == "choice":
            items = [
                (i.get(qn("w:displayText")), i.get(qn("w:value")))
                for i in pr.find(qn("w:dropDownList")).iter(qn("w:listItem"))
                if i.get(qn("w:value"))
            ]
            assert items == [(c.label, c.id) for c in spec.choices]
            assert pr.find(qn("w:showingPlcHdr")) is not None
        else:
            assert pr.find(qn("w:text")) is not None
            assert pr.find(qn("w:showingPlcHdr")) is not None


def test_blank_docx_lays_each_field_out_as_a_labelled_row() -> None:
    document = docx.Document(io.BytesIO(docx_template()))
    section = document.sections[0]
    assert (round(section.page_width.mm), round(section.page_height.mm)) == (210, 297)
    headings = [
        p.text for p in document.paragraphs if p.style.name.startswith(("Heading", "Title"))
    ]
    assert headings[0] == TITLE
    assert [h for h in headings if h[:2] in {f"{s.id}." for s in SCHEMA.sections}] == [
        f"{s.id}. {s.title}" for s in SCHEMA.sections
    ]
    assert len(document.tables) == len(SCHEMA.sections)
    labels = []
    for table in document.tables:
        for row in table.rows:
            assert len(row.cells) == 2
            labels.append(row.cells[0].paragraphs[0].text.rstrip(" *"))
    assert labels == [spec.label for spec in SCHEMA.fields]
    text = "\n".join(p.text for p in document.paragraphs)
    for phrase in ("One child per form", "MASH", "approved email address", "DD/MM/YYYY"):
        assert phrase in text


def test_export_blank_forms_writes_both_files(tmp_path: Path) -> None:
    target = tmp_path / "new" / "forms"
    paths = export_blank_forms(target)
    assert [p.name for p in paths] == [PDF_FILENAME, DOCX_FILENAME]
    assert paths[0].read_bytes().startswith(b"%PDF-")
    assert read_docx(paths[1].read_bytes()) == {}


# ---- round trip ----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_every_field_round_trips_through_the_pdf(variant: int) -> None:
    values = every_field(variant)
    assert read_pdf(fill_pdf(values, pdf_template())) == values


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_every_field_round_trips_through_the_word_form(variant: int) -> None:
    values = every_field(variant)
    assert read_docx(fill_docx(values, docx_template())) == values


def test_example_referral_round_trips_through_read_form() -> None:
    pdf = read_form("referral.pdf", "application/pdf", fill_pdf(EXAMPLE_VALUES, pdf_template()))
    word = read_form("referral.docx", "", fill_docx(EXAMPLE_VALUES, docx_template()))
    assert pdf is not None and pdf.format == "pdf" and pdf.fields == dict(EXAMPLE_VALUES)
    assert word is not None and word.format == "docx" and word.fields == dict(EXAMPLE_VALUES)


def test_blank_forms_read_as_empty_and_are_not_forms() -> None:
    assert read_pdf(pdf_template()) == {}
    assert read_docx(docx_template()) == {}
    assert read_form(PDF_FILENAME, "application/pdf", pdf_template()) is None
    assert read_form(DOCX_FILENAME, "", docx_template()) is None


def test_filled_pdf_asks_viewers_to_draw_the_values() -> None:
    reader = PdfReader(io.BytesIO(fill_pdf({"town": "Leeds"}, pdf_template())))
    assert reader.trailer["/Root"]["/AcroForm"]["/NeedAppearances"] == True  # noqa: E712 - a pypdf BooleanObject


def test_fill_refuses_unknown_fields_and_bad_answers() -> None:
    with pytest.raises(ValueError, match="no field"):
        fill_pdf({"favourite_colour": "blue"}, pdf_template())
    with pytest.raises(ValueError, match="no content control"):
        fill_docx({"favourite_colour": "blue"}, docx_template())
    with pytest.raises(ValueError):
        fill_pdf({"ewo_consulted": "maybe"}, pdf_template())
    with pytest.raises(ValueError):
        fill_docx({"reason": "went_to_the_moon"}, docx_template())


_TEXT = st.text(
    alphabet=st.characters(
        codec="latin-1", categories=("L", "N", "P", "Zs", "S"), exclude_characters="\xa0\xad"
    ),
    min_size=1,
    max_size=40,
).map(str.strip)


@settings(
    max_examples=15, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(first=_TEXT.filter(bool), notes=st.lists(_TEXT.filter(bool), min_size=1, max_size=3))
def test_any_typed_text_round_trips(first: str, notes: list[str]) -> None:
    values = {"child_first_name": first, "enquiries_made": "\n".join(notes)}
    # On a form that has been filled in, an unticked box is an answer: no.
    expected = values | {spec.id: "no" for spec in SCHEMA.fields if spec.type == "yes_no"}
    assert read_pdf(fill_pdf(values, pdf_template())) == expected
    assert read_docx(fill_docx(values, docx_template())) == expected


def test_names_outside_latin_1_survive_both_formats() -> None:
    values = {"child_first_name": "Ștefan", "child_last_name": "李 محمد", "town": "Łódź"}
    assert read_pdf(fill_pdf(values, pdf_template())).items() >= values.items()
    assert read_docx(fill_docx(values, docx_template())).items() >= values.items()
