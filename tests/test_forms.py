"""Reading filled forms: every reader feature, hostile files, and what is not a form at all."""

from __future__ import annotations

import io
import zipfile
from functools import cache

import docx
import pytest
from docx.oxml import parse_xml
from docx.oxml.ns import qn
from hypothesis import given, settings
from hypothesis import strategies as st
from pypdf import PdfReader, PdfWriter
from pypdf.generic import ArrayObject, DictionaryObject, NameObject, TextStringObject
from reportlab.lib.pagesizes import A4
from reportlab.pdfgen.canvas import Canvas

from cme_mailbot.forms import ExtractedForm, FormUnreadable, read_form
from cme_mailbot.forms.container import ContainerLimits, check_docx_container
from cme_mailbot.forms.docx import read_docx
from cme_mailbot.forms.export import blank_docx, blank_pdf, sdt_xml
from cme_mailbot.forms.fill import EXAMPLE_VALUES, fill_docx, fill_pdf, handmade_docx
from cme_mailbot.forms.labels import LabelIndex
from cme_mailbot.forms.pdf import read_pdf
from cme_mailbot.forms.values import read_tick_boxes
from cme_mailbot.schema import default_schema, normalise_label

SCHEMA = default_schema()
CHILD = "Amelia"  # EXAMPLE_VALUES' child: must never appear in an error message
DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


@cache
def pdf_template() -> bytes:
    return blank_pdf()


@cache
def docx_template() -> bytes:
    return blank_docx()


@cache
def filled_pdf() -> bytes:
    return fill_pdf(EXAMPLE_VALUES, pdf_template())


@cache
def filled_docx() -> bytes:
    return fill_docx(EXAMPLE_VALUES, docx_template())


def reportlab_pdf(draw: object) -> bytes:
    """A one-page PDF whose form fields are drawn by `draw(acroForm)`."""
    buffer = io.BytesIO()
    canvas = Canvas(buffer, pagesize=A4, invariant=1)
    canvas.drawString(72, 800, "A form from another council")
    draw(canvas.acroForm)  # type: ignore[operator]
    canvas.showPage()
    canvas.save()
    return buffer.getvalue()


def rewrite_pdf(data: bytes, change: object) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    change(writer)  # type: ignore[operator]
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def zip_bytes(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def docx_entries(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


# ---- PDF reader ---------------------------------------------------------------------------


def test_pdf_check_boxes_read_yes_when_ticked_and_no_when_not() -> None:
    fields = read_pdf(fill_pdf({"town": "Leeds", "ewo_consulted": "yes"}, pdf_template()))
    assert fields["ewo_consulted"] == "yes"
    assert fields["child_protection_concern"] == "no"
    assert fields["electively_home_educated"] == "no"


def test_pdf_check_box_with_any_on_state_name_reads_yes() -> None:
    def tick_with_odd_name(writer: PdfWriter) -> None:
        for annot in writer.pages[-1]["/Annots"]:
            annot = annot.get_object()
            if annot.get("/T") == "child_protection_concern":
                annot[NameObject("/V")] = NameObject("/On")
                annot[NameObject("/AS")] = NameObject("/On")

    data = rewrite_pdf(fill_pdf({"town": "Leeds"}, pdf_template()), tick_with_odd_name)
    assert read_pdf(data)["child_protection_concern"] == "yes"


def test_pdf_check_box_without_a_value_is_read_from_its_appearance_state() -> None:
    def draw(form: object) -> None:
        form.checkbox(name="ewo_consulted", checked=True, x=72, y=700)  # type: ignore[attr-defined]
        form.checkbox(name="child_protection_concern", checked=False, x=72, y=650)  # type: ignore[attr-defined]

    def drop_values(writer: PdfWriter) -> None:
        for annot in writer.pages[0]["/Annots"]:
            del annot.get_object()["/V"]

    fields = read_pdf(rewrite_pdf(reportlab_pdf(draw), drop_values))
    assert fields == {"ewo_consulted": "yes", "child_protection_concern": "no"}


def test_pdf_combo_box_reads_its_export_value() -> None:
    fields = read_pdf(fill_pdf({"reason": "moved_abroad", "year_group": "year_10"}, pdf_template()))
    assert (fields["reason"], fields["year_group"]) == ("moved_abroad", "year_10")


def test_pdf_combo_box_holding_its_display_text_reads_the_export_value() -> None:
    def draw(form: object) -> None:
        form.choice(  # type: ignore[attr-defined]
            name="reason",
            value="Moved abroad",
            options=[
                ("Moved abroad", "moved_abroad"),
                ("No longer at address", "no_longer_at_address"),
            ],
            x=72,
            y=700,
            width=200,
            height=20,
        )

    def display_as_value(writer: PdfWriter) -> None:
        writer.pages[0]["/Annots"][0].get_object()[NameObject("/V")] = TextStringObject(
            "Moved abroad"
        )

    assert read_pdf(rewrite_pdf(reportlab_pdf(draw), display_as_value)) == {
        "reason": "moved_abroad"
    }


def test_pdf_radio_group_reads_the_selected_option() -> None:
    def draw(form: object) -> None:
        for i, choice in enumerate(SCHEMA["reason"].choices):
            form.radio(  # type: ignore[attr-defined]
                name="reason",
                value=choice.id,
                selected=choice.id == "not_returned_from_leave",
                x=72 + 30 * i,
                y=700,
            )
        for i, answer in enumerate(("yes", "no")):
            form.radio(name="child_gender", value=answer, x=72 + 30 * i, y=600)  # type: ignore[attr-defined]

    # child_gender has no option selected: it is left out, not read as "Off".
    assert read_pdf(reportlab_pdf(draw)) == {"reason": "not_returned_from_leave"}


def test_pdf_radio_group_filled_by_pypdf_reads_the_option() -> None:
    def draw(form: object) -> None:
        for i, answer in enumerate(("Yes", "No")):
            form.radio(name="ewo_consulted", value=answer, x=72 + 30 * i, y=700)  # type: ignore[attr-defined]

    data = fill_pdf({"ewo_consulted": "No"}, reportlab_pdf(draw))
    assert read_pdf(data) == {"ewo_consulted": "No"}


def test_pdf_hierarchical_field_names_match_on_their_last_part() -> None:
    def nest(writer: PdfWriter) -> None:
        acro_form = writer.root_object["/AcroForm"]
        parent = DictionaryObject(
            {
                NameObject("/T"): TextStringObject("form1[0]"),
                NameObject("/Kids"): ArrayObject(list(acro_form["/Fields"])),
            }
        )
        ref = writer._add_object(parent)
        for kid in parent["/Kids"]:
            kid.get_object()[NameObject("/Parent")] = ref
        acro_form[NameObject("/Fields")] = ArrayObject([ref])

    data = rewrite_pdf(filled_pdf(), nest)
    assert read_pdf(data) == dict(EXAMPLE_VALUES)


def test_pdf_fields_named_after_labels_are_matched_and_strangers_ignored() -> None:
    def draw(form: object) -> None:
        form.textfield(name="Surname", value="Hartley", x=72, y=700, maxlen=0)  # type: ignore[attr-defined]
        form.textfield(name="Text7", value="x", tooltip="Post code", x=72, y=650)  # type: ignore[attr-defined]
        form.textfield(name="Favourite colour", value="Blue", x=72, y=600)  # type: ignore[attr-defined]
        form.textfield(name="TOWN", value="Leeds", x=72, y=550)  # type: ignore[attr-defined]

    assert read_pdf(reportlab_pdf(draw)) == {
        "child_last_name": "Hartley",
        "postcode": "x",
        "town": "Leeds",
    }


def test_pdf_viewer_line_breaks_and_surrounding_space_are_normalised() -> None:
    data = fill_pdf({"siblings": "  Ben, 01/02/2016\r\nCara, 03/04/2018\r  "}, pdf_template())
    assert read_pdf(data)["siblings"] == "Ben, 01/02/2016\nCara, 03/04/2018"


def test_pdf_with_only_unticked_boxes_reads_as_empty() -> None:
    assert read_pdf(fill_pdf({"ewo_consulted": "no"}, pdf_template())) == {}


@pytest.mark.parametrize("user_password", ["", "secret"])
def test_encrypted_pdf_is_unreadable_even_with_an_empty_password(user_password: str) -> None:
    data = rewrite_pdf(filled_pdf(), lambda w: w.encrypt(user_password, "owner-password"))
    with pytest.raises(FormUnreadable, match="encrypted") as caught:
        read_form("referral.pdf", "application/pdf", data)
    assert CHILD not in str(caught.value)


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.9, 0.99])
def test_truncated_pdf_is_unreadable(keep: float) -> None:
    data = filled_pdf()
    with pytest.raises(FormUnreadable) as caught:
        read_pdf(data[: int(len(data) * keep)])
    assert CHILD not in str(caught.value)


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.7\n" + bytes(range(256)) * 20,
        b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\ntrailer << /Root 1 0 R >>",
        b"%PDF-",
    ],
)
def test_corrupt_pdf_is_unreadable(data: bytes) -> None:
    with pytest.raises(FormUnreadable):
        read_form("form.pdf", "application/pdf", data)


def test_pdf_without_form_fields_is_not_a_form() -> None:
    letter = reportlab_pdf(lambda form: None)
    assert read_pdf(letter) == {}
    assert read_form("scanned-letter.pdf", "application/pdf", letter) is None


# ---- Word reader: content controls --------------------------------------------------------


def test_word_check_boxes_and_drop_downs_read_by_tag() -> None:
    values = {"ewo_consulted": "yes", "reason": "moved_abroad", "destination_country": "Poland"}
    fields = read_docx(fill_docx(values, docx_template()))
    assert fields["ewo_consulted"] == "yes"
    assert fields["child_protection_concern"] == "no"
    assert fields["reason"] == "moved_abroad"
    assert fields["destination_country"] == "Poland"


def test_word_drop_down_filled_with_a_label_reads_the_id() -> None:
    fields = read_docx(fill_docx({"social_care_status": "Child in need"}, docx_template()))
    assert fields["social_care_status"] == "child_in_need"


def test_word_placeholder_text_counts_as_blank_even_without_the_flag() -> None:
    document = docx.Document(io.BytesIO(fill_docx({"town": "Leeds"}, docx_template())))
    for flag in list(document.element.body.iter(qn("w:showingPlcHdr"))):
        flag.getparent().remove(flag)
    buffer = io.BytesIO()
    document.save(buffer)
    assert read_docx(buffer.getvalue()) == {"town": "Leeds"} | {
        spec.id: "no" for spec in SCHEMA.fields if spec.type == "yes_no"
    }


def test_word_content_controls_are_found_outside_tables_too() -> None:
    document = docx.Document()
    document.add_paragraph("Child's details")
    for index, field_id in enumerate(("child_first_name", "child_protection_concern")):
        document.add_paragraph()._p.append(parse_xml(sdt_xml(SCHEMA[field_id], index)))
    buffer = io.BytesIO()
    document.save(buffer)
    data = fill_docx(
        {"child_first_name": "Ben", "child_protection_concern": "yes"}, buffer.getvalue()
    )
    assert read_docx(data) == {"child_first_name": "Ben", "child_protection_concern": "yes"}


def test_word_content_controls_win_over_typed_rows() -> None:
    document = docx.Document(io.BytesIO(fill_docx({"town": "Leeds"}, docx_template())))
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "Town"
    table.rows[0].cells[1].text = "York"
    table.add_row().cells[0].text = "Postcode"
    table.rows[1].cells[1].text = "YO1 7HH"
    buffer = io.BytesIO()
    document.save(buffer)
    fields = read_docx(buffer.getvalue())
    assert fields["town"] == "Leeds"
    # The published form has a postcode control, left blank: a stray row cannot fill it.
    assert "postcode" not in fields


def test_word_tracked_deletions_are_not_read() -> None:
    xml = (
        sdt_xml(SCHEMA["town"], 1)
        .replace("<w:showingPlcHdr/>", "")
        .replace(
            "<w:sdtContent>",
            '<w:sdtContent><w:del w:id="9" w:author="x">'
            "<w:r><w:delText>York</w:delText></w:r></w:del><w:r><w:t>Leeds</w:t></w:r>",
        )
    )
    xml = xml.replace(
        '<w:r><w:rPr><w:color w:val="767676"/></w:rPr>'
        "<w:t>Click or tap here to enter text.</w:t></w:r>",
        "",
    )
    document = docx.Document()
    document.add_paragraph()._p.append(parse_xml(xml))
    buffer = io.BytesIO()
    document.save(buffer)
    assert read_docx(buffer.getvalue()) == {"town": "Leeds"}


# ---- Word reader: tables typed by hand ------------------------------------------------------


def test_handmade_table_matches_labels_aliases_colons_and_odd_case() -> None:
    data = handmade_docx(
        [
            ("Forename:", "Amy"),
            ("SURNAME", "Smith"),
            ("d.o.b.", "01/02/2015"),
            ("Date of birth (DD/MM/YYYY)", "02/02/2015"),  # the alias above came first
            ("Unique Pupil Number (UPN) *", "B873200115001"),
            ("3. Post code", "NB1 4QT"),
            ("Parent/Carer 1 Telephone:", "07700 900123"),
            ("Reason for referral", "Moved abroad"),
            ("Reasonable enquiries made (who, when, outcome)", "Visited home\nPhoned mum"),
        ]
    )
    assert read_docx(data) == {
        "child_first_name": "Amy",
        "child_last_name": "Smith",
        "child_dob": "01/02/2015",
        "upn": "B873200115001",
        "postcode": "NB1 4QT",
        "parent1_phone": "07700 900123",
        "reason": "Moved abroad",
        "enquiries_made": "Visited home\nPhoned mum",
    }


def test_handmade_table_tolerates_headings_extra_rows_and_extra_columns() -> None:
    data = handmade_docx(
        [
            ("Section A: about the child",),
            ("Office use only", ""),
            ("Child's first name", "", "Amy", "ignored"),
            ("Surname", "Smith", "Year group", "Year 6"),
            ("Town", "", "Postcode", "LS1 1AA"),  # a blank value is not the next label
            ("Comments", "Family were helpful"),
            ("School", ""),
        ],
        heading="CME referral form (school copy)",
    )
    assert read_docx(data) == {
        "child_first_name": "Amy",
        "child_last_name": "Smith",
        "year_group": "Year 6",
        "postcode": "LS1 1AA",
    }


def test_prose_in_a_value_cell_is_not_read_as_a_label() -> None:
    data = handmade_docx(
        [
            ("Enquiries made", "Home visit.\nDate: 05/09/2024"),
            ("Comments", "Town: unknown"),  # not a label's value, so "Town: ..." counts
            ("Date of referral", "02/10/2024"),
        ]
    )
    assert read_docx(data) == {
        "enquiries_made": "Home visit.\nDate: 05/09/2024",
        "referral_date": "02/10/2024",
        "town": "unknown",
    }


def test_label_value_paragraphs_are_read() -> None:
    data = handmade_docx(
        [("First name", "Amy")],
        paragraphs=[
            "Referral for a child missing education",
            "Postcode: NB1 4QT",
            "Town:\tLeeds",
            "Surname\tSmith",
            "First name: Not Amy",  # the table came first
            "We spoke to the family: they had moved",
        ],
    )
    assert read_docx(data) == {
        "child_first_name": "Amy",
        "postcode": "NB1 4QT",
        "town": "Leeds",
        "child_last_name": "Smith",
    }


def test_handmade_tick_boxes_become_answers() -> None:
    data = handmade_docx(
        [
            ("EWO consulted", "Yes ☒ No ☐"),
            ("Child protection concerns", "☐ Yes  ☒ No"),
            ("Electively home educated", "Yes ☐ No ☐"),  # unanswered
            ("In admissions process", "☒"),  # a lone glyph is left for validation
            ("Gender", "Female ☐ Male ☒ Other ☐"),
            ("SEN", "None ☒ / SEN support ☒"),  # two ticks: left for validation to refuse
        ]
    )
    assert read_docx(data) == {
        "ewo_consulted": "yes",
        "child_protection_concern": "no",
        "in_admissions_process": "☒",
        "child_gender": "Male",
        "sen_status": "None ☒ / SEN support ☒",
    }


def test_untagged_check_box_controls_in_a_typed_table_read_as_ticks() -> None:
    document = docx.Document(io.BytesIO(handmade_docx([("EWO consulted", "")])))
    paragraph = document.tables[0].rows[0].cells[1].paragraphs[0]
    for answer, glyph in (("Yes", "☒"), ("No", "☐")):
        paragraph.add_run(f" {answer} ")
        xml = sdt_xml(SCHEMA["ewo_consulted"], 7).replace('<w:tag w:val="ewo_consulted"/>', "")
        paragraph._p.append(parse_xml(xml.replace("<w:t>☐</w:t>", f"<w:t>{glyph}</w:t>")))
    buffer = io.BytesIO()
    document.save(buffer)
    assert read_docx(buffer.getvalue()) == {"ewo_consulted": "yes"}


def test_published_word_form_stripped_of_its_controls_still_reads() -> None:
    """An editor that drops content controls (keeping their text) leaves a labelled table."""
    filled = fill_docx({"child_first_name": "Amy", "ewo_consulted": "yes"}, docx_template())
    document = docx.Document(io.BytesIO(filled))
    for sdt in list(document.element.body.iter(qn("w:sdt"))):
        parent = sdt.getparent()
        position = parent.index(sdt)
        for run in sdt.find(qn("w:sdtContent")):
            parent.insert(position, run)
            position += 1
        parent.remove(sdt)
    buffer = io.BytesIO()
    document.save(buffer)
    fields = read_docx(buffer.getvalue())
    assert fields["child_first_name"] == "Amy"
    assert fields["ewo_consulted"] == "yes"
    assert fields["child_protection_concern"] == "no"
    assert "town" not in fields  # "Click or tap here to enter text." is not a town


def test_word_file_without_fields_is_not_a_form() -> None:
    letter = handmade_docx([("Dear colleague", "Please find attached")], heading="Letter")
    assert read_docx(letter) == {}
    assert read_form("letter.docx", DOCX_TYPE, letter) is None


# ---- hostile Word files ---------------------------------------------------------------------


def test_zip_bomb_named_docx_is_unreadable() -> None:
    bomb = zip_bytes({"word/document.xml": b"<a/>", "word/media/x.bin": bytes(60 * 1024 * 1024)})
    assert len(bomb) < 200_000
    with pytest.raises(FormUnreadable, match="inflates"):
        read_form("referral.docx", DOCX_TYPE, bomb)


def test_highly_compressed_entry_is_unreadable_even_under_the_size_limit() -> None:
    entries = docx_entries(docx_template()) | {"word/media/x.bin": bytes(8 * 1024 * 1024)}
    with pytest.raises(FormUnreadable, match="ZIP bomb"):
        read_form("referral.docx", DOCX_TYPE, zip_bytes(entries))


def test_docx_with_macros_is_unreadable() -> None:
    entries = docx_entries(filled_docx()) | {"word/vbaProject.bin": b"\x00" * 100}
    with pytest.raises(FormUnreadable, match="macros"):
        read_form("referral.docx", DOCX_TYPE, zip_bytes(entries))


def test_macro_enabled_content_type_is_unreadable() -> None:
    entries = docx_entries(filled_docx())
    entries["[Content_Types].xml"] = entries["[Content_Types].xml"].replace(
        b"wordprocessingml.document.main+xml", b"ms-word.document.macroEnabled.main+xml"
    )
    with pytest.raises(FormUnreadable, match="macro"):
        read_docx(zip_bytes(entries))


def test_zip_with_thousands_of_entries_is_unreadable() -> None:
    entries = {"word/document.xml": b"<a/>"} | {f"junk/{i}.txt": b"" for i in range(5000)}
    with pytest.raises(FormUnreadable, match="too many entries"):
        read_form("referral.docx", "", zip_bytes(entries, zipfile.ZIP_STORED))


def test_container_limits_are_configurable() -> None:
    with pytest.raises(FormUnreadable):
        check_docx_container(docx_template(), ContainerLimits(max_entries=3))
    check_docx_container(docx_template())


@pytest.mark.parametrize(
    "mangle",
    [
        lambda data: data[: len(data) // 2],
        lambda data: data[:-30],
        lambda data: data.replace(b"word/document.xml", b"word/documenX.xml", 1),
    ],
    ids=["half", "no-end-of-directory", "bad-local-header"],
)
def test_damaged_docx_is_unreadable(mangle: object) -> None:
    with pytest.raises(FormUnreadable) as caught:
        read_form("referral.docx", DOCX_TYPE, mangle(filled_docx()))  # type: ignore[operator]
    assert CHILD not in str(caught.value)


def test_docx_with_broken_xml_is_unreadable_without_quoting_it() -> None:
    entries = docx_entries(filled_docx())
    entries["word/document.xml"] = entries["word/document.xml"][:-200] + b"<w:t>Amelia"
    with pytest.raises(FormUnreadable) as caught:
        read_docx(zip_bytes(entries))
    assert CHILD not in str(caught.value)


def test_zip_without_a_word_document_named_docx_is_unreadable() -> None:
    with pytest.raises(FormUnreadable):
        read_form("referral.docx", DOCX_TYPE, zip_bytes({"xl/workbook.xml": b"<a/>"}))
    assert read_form("photos.zip", "application/zip", zip_bytes({"a.txt": b"hi"})) is None


def test_entity_expansion_is_not_performed() -> None:
    entries = docx_entries(docx_template())
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE w:document [<!ENTITY a "lol">'
        + b"".join(
            f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">'.encode() for i in range(8)
        )
        + b"]>"
    )
    body = entries["word/document.xml"].split(b"?>", 1)[1]
    entries["word/document.xml"] = laughs + body.replace(b"<w:body>", b"<w:body>&i;", 1)
    try:
        fields = read_docx(zip_bytes(entries))
    except FormUnreadable:
        return
    assert fields == {}


# ---- read_form: deciding what an attachment is -------------------------------------------------


def test_read_form_trusts_the_bytes_over_the_name() -> None:
    form = read_form("referral.docx", DOCX_TYPE, filled_pdf())
    assert form == ExtractedForm("referral.docx", "pdf", dict(EXAMPLE_VALUES))
    form = read_form("scan0001", "application/octet-stream", filled_docx())
    assert form is not None and form.format == "docx"


@pytest.mark.parametrize(
    ("filename", "content_type"),
    [
        ("referral.pdf", "application/octet-stream"),
        ("REFERRAL.PDF", ""),
        ("attachment", "application/pdf; name=referral"),
        ("referral.docx", ""),
        ("referral", DOCX_TYPE),
    ],
)
def test_a_file_claiming_to_be_a_form_whose_bytes_are_not_is_unreadable(
    filename: str, content_type: str
) -> None:
    with pytest.raises(FormUnreadable):
        read_form(filename, content_type, b"\x00\x01 these bytes are not a form")


@pytest.mark.parametrize(
    ("filename", "content_type", "data"),
    [
        ("logo.png", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(100)),
        ("photo.jpg", "image/jpeg", b"\xff\xd8\xff\xe0" + bytes(100)),
        ("notes.txt", "text/plain", b"Child's first name: Amy"),
        ("old-form.doc", "application/msword", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100)),
        ("", "", b""),
    ],
)
def test_other_attachments_are_not_forms(filename: str, content_type: str, data: bytes) -> None:
    assert read_form(filename, content_type, data) is None


def test_filename_is_never_used_as_a_path(tmp_path: object) -> None:
    form = read_form("../../../../etc/passwd.pdf", "application/pdf", filled_pdf())
    assert form is not None and form.filename == "../../../../etc/passwd.pdf"


# ---- labels and tick boxes ------------------------------------------------------------------


def test_every_label_alias_and_id_matches_its_own_field() -> None:
    index = LabelIndex(SCHEMA)
    for spec in SCHEMA.fields:
        for text in (spec.id, spec.label, *spec.aliases):
            assert index.match(text) == spec.id, text
            assert index.match(f"  {text.upper()}: ") == spec.id, text
            assert index.match(f"{text} *") == spec.id, text


def test_no_two_fields_share_a_label_or_alias() -> None:
    owners: dict[str, str] = {}
    for spec in SCHEMA.fields:
        for text in (spec.label, *spec.aliases):
            key = normalise_label(text)
            assert owners.setdefault(key, spec.id) == spec.id, f"{text!r} is ambiguous"


@pytest.mark.parametrize(
    ("field_id", "text", "expected"),
    [
        ("ewo_consulted", "Yes ☒ No ☐", "yes"),
        ("ewo_consulted", "Yes ☐ No ☒", "no"),
        ("ewo_consulted", "☒ Yes ☐ No", "yes"),
        ("ewo_consulted", "YES: ☑   NO: ☐", "yes"),
        ("ewo_consulted", "Yes ☐ No ☐", ""),
        ("ewo_consulted", "☒ Yes (leave unticked for no)", "yes"),
        ("ewo_consulted", "☐ Yes (leave unticked for no)", "no"),
        ("ewo_consulted", "Yes ☒ No ☒", "Yes ☒ No ☒"),
        ("ewo_consulted", "☒", "☒"),
        ("ewo_consulted", "yes", "yes"),
        ("ewo_consulted", "Yes ☒ because ☐ maybe", "Yes ☒ because ☐ maybe"),
        ("reason", "☐ No longer at address ☒ Moved abroad", "Moved abroad"),
        ("town", "Yes ☒ No ☐", "Yes ☒ No ☐"),
    ],
)
def test_tick_boxes_in_a_cell(field_id: str, text: str, expected: str) -> None:
    assert read_tick_boxes(text, SCHEMA[field_id]) == expected


@settings(max_examples=200, derandomize=True, deadline=None)
@given(text=st.text(alphabet=st.sampled_from("ab :/()☐☒☑\n\t-"), max_size=30))
def test_tick_box_reading_and_label_matching_never_fail(text: str) -> None:
    result = read_tick_boxes(text, SCHEMA["ewo_consulted"])
    assert result in ("yes", "no", "") or result in text or normalise_label(result) in text
    LabelIndex(SCHEMA).match(text)
