"""Extract stage: find the referral forms among a message's attachments, safely.

Before any parser sees a file, three checks run here in the poller, on sizes and the first bytes
only:

1. Caps (`LimitsSettings`): more than `max_attachments` attachments, or any one larger than
   `max_attachment_bytes`, and the message is quarantined with nothing read.
2. An allow-list by declared type AND content. A file is read as a form only when its name or
   MIME type says PDF (or Word) and its bytes say the same. Anything that claims to be a form
   but is not (an .exe or a ZIP named form.pdf; a name saying .pdf and a type saying Word), and
   anything whose bytes are a PDF or Word file while its name and type say something else (a
   PDF named logo.png), is quarantined for a person to look at. Files that neither claim nor
   are a form (a logo, a signature image, a .txt) are skipped unread.
3. The reader (in production the sandboxed one, `cme_mailbot.sandbox`) reads the rest. The first
   file it cannot read stops the stage: the message is quarantined anyway, and a message of
   twenty hostile files must not cost twenty sandbox time-outs.

Reasons are short and name no file content or filename: they end up in the ledger and logs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from cme_mailbot.config import LimitsSettings
from cme_mailbot.forms import ExtractedForm, FormUnreadable
from cme_mailbot.forms.container import looks_like_docx
from cme_mailbot.stages.parse import Attachment

FormReader = Callable[[str, str, bytes], ExtractedForm | None]
FormFormat = Literal["pdf", "docx"]

_PDF_MAGIC = b"%PDF-"
_PDF_HEADER_WINDOW = 1024  # as read_form: viewers allow a little junk before the header
_PDF_TYPES = frozenset({"application/pdf", "application/x-pdf", "application/acrobat"})
_DOCX_TYPES = frozenset(
    {
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.ms-word.document.macroenabled.12",
    }
)
_EXTENSIONS: dict[str, FormFormat] = {"pdf": "pdf", "docx": "docx", "docm": "docx"}
_NAMES = {"pdf": "PDF", "docx": "Word"}


@dataclass
class Extraction:
    forms: list[ExtractedForm] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # why, per attachment (no child data)


class ReaderUnavailable(Exception):
    """The reader cannot read anything now (the sandbox could not start): not the message's
    fault, so the message is tried again later rather than quarantined."""


class MessageReader(Protocol):
    """A form reader that can also take a whole message (the sandboxed one): it parses the MIME
    (`parse_message`) where the untrusted bytes are and, when `forms` is true, runs
    `extract_forms` there too; returns the extraction (empty without `forms`). Raises
    `ParseError` for a message that cannot be parsed, `ReaderUnavailable` when it cannot read
    at all."""

    def read_message(self, raw: bytes, limits: LimitsSettings, *, forms: bool) -> Extraction: ...


def declared_formats(filename: str, content_type: str) -> set[FormFormat]:
    """The form formats an attachment's name and MIME type claim (none, one, or a conflict)."""
    claims: set[FormFormat] = set()
    _stem, dot, extension = filename.strip().rpartition(".")
    if dot:
        fmt = _EXTENSIONS.get(extension.strip().lower())
        if fmt:
            claims.add(fmt)
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime in _PDF_TYPES:
        claims.add("pdf")
    elif mime in _DOCX_TYPES:
        claims.add("docx")
    return claims


def sniffed_format(data: bytes) -> FormFormat | None:
    """What the bytes are, whatever the sender says (the same test as `forms.read_form`)."""
    if looks_like_docx(data):  # a ZIP never starts with a PDF header
        return "docx"
    if _PDF_MAGIC in data[:_PDF_HEADER_WINDOW]:
        return "pdf"
    return None


def admit(att: Attachment) -> bool:
    """True to read the attachment as a form, False to skip it; raises `FormUnreadable` for a
    file whose claimed and actual format disagree."""
    claims = declared_formats(att.filename, att.content_type)
    actual = sniffed_format(att.data)
    if len(claims) > 1:
        raise FormUnreadable("an attachment's name and type claim different form formats")
    if claims and actual not in claims:
        [claimed] = claims
        name = _NAMES[claimed]
        raise FormUnreadable(f"an attachment is named or typed as {name} but is not a {name} file")
    if actual is not None and not claims:
        name = _NAMES[actual]
        raise FormUnreadable(f"an attachment is a {name} file named and typed as something else")
    return actual is not None


def check_caps(attachments: list[Attachment], limits: LimitsSettings) -> str | None:
    """Why the attachments break the configured caps, or None."""
    if len(attachments) > limits.max_attachments:
        return f"too many attachments ({len(attachments)}, limit {limits.max_attachments})"
    largest = max((len(a.data) for a in attachments), default=0)
    if largest > limits.max_attachment_bytes:
        return f"an attachment is too large ({largest} bytes, limit {limits.max_attachment_bytes})"
    return None


def extract_forms(
    attachments: list[Attachment], reader: FormReader, limits: LimitsSettings | None = None
) -> Extraction:
    out = Extraction()
    over = check_caps(attachments, limits or LimitsSettings())
    if over:
        out.unreadable.append(over)
        return out
    for index, att in enumerate(attachments):
        try:
            if not admit(att):
                continue
            form = reader(att.filename, att.content_type, att.data)
        except FormUnreadable as exc:
            out.unreadable.append(str(exc) or "unreadable attachment")
            left = len(attachments) - index - 1
            if left:
                out.unreadable.append(f"{left} further attachment(s) not read")
            return out
        if form is not None:
            out.forms.append(form)
    return out
