"""Referral-form readers: one per format, all yielding field id -> raw text.

The interface the pipeline relies on:

* `read_form(filename, content_type, data)` returns an `ExtractedForm` for an attachment that is a
  referral form, `None` for an attachment that is not one (a logo, a letter), and raises
  `FormUnreadable` for a file that looks like a form but cannot be read safely (corrupt,
  encrypted, a ZIP bomb): the pipeline quarantines the message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


class FormUnreadable(Exception):
    """The attachment could not be read safely. The message text never contains child data."""


@dataclass
class ExtractedForm:
    filename: str
    format: Literal["pdf", "docx"]
    # Raw text by field id, as the school typed it; check boxes read as "yes"/"no".
    # Fields that are absent or blank on the form are left out.
    fields: dict[str, str] = field(default_factory=dict)


_PDF_MAGIC = b"%PDF-"
_PDF_HEADER_WINDOW = 1024  # the PDF header may follow a little junk, as viewers allow
_PDF_TYPES = frozenset({"application/pdf", "application/x-pdf", "application/acrobat"})
_DOCX_TYPES = frozenset(
    {
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.ms-word.document.macroenabled.12",
    }
)
_PDF_EXTENSIONS = frozenset({"pdf"})
_DOCX_EXTENSIONS = frozenset({"docx", "docm"})


def _claimed_format(filename: str, content_type: str) -> Literal["pdf", "docx"] | None:
    """What the sender says the file is. The name is only looked at, never used as a path."""
    extension = filename.rsplit(".", 1)[-1].strip().lower() if "." in filename else ""
    mime = content_type.split(";", 1)[0].strip().lower()
    if extension in _PDF_EXTENSIONS or mime in _PDF_TYPES:
        return "pdf"
    if extension in _DOCX_EXTENSIONS or mime in _DOCX_TYPES:
        return "docx"
    return None


def _sniffed_format(data: bytes) -> Literal["pdf", "docx"] | None:
    """What the bytes are, whatever the sender says."""
    from cme_mailbot.forms.container import looks_like_docx

    if looks_like_docx(data):  # checked first: a ZIP never starts with a PDF header
        return "docx"
    if _PDF_MAGIC in data[:_PDF_HEADER_WINDOW]:
        return "pdf"
    return None


def read_form(filename: str, content_type: str, data: bytes) -> ExtractedForm | None:
    """Read one attachment as a referral form.

    The bytes decide the format (a PDF header; a ZIP holding word/document.xml); the name and
    content type only decide whether a file that is neither was meant to be a form. Returns None
    for an attachment that is not a form (an image, a scanned letter: a PDF or Word file with no
    schema field in it); raises `FormUnreadable` for a form that cannot be read safely, and for
    a file named or typed as PDF/Word whose bytes are not.
    """
    # Imported here because the readers import FormUnreadable from this module.
    from cme_mailbot.forms.docx import read_docx
    from cme_mailbot.forms.pdf import read_pdf

    fmt = _sniffed_format(data)
    if fmt is None:
        claimed = _claimed_format(filename, content_type)
        if claimed is not None:
            raise FormUnreadable(f"the attachment is named or typed as {claimed} but is not one")
        return None
    fields = read_pdf(data) if fmt == "pdf" else read_docx(data)
    if not fields:
        return None
    # A NUL has no meaning in a form and cannot be stored in PostgreSQL text.
    fields = {k: v.replace("\x00", "") for k, v in fields.items() if v.replace("\x00", "")}
    return ExtractedForm(filename=filename, format=fmt, fields=fields)
