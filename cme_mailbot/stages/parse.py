"""Parse stage: raw bytes -> the facts later stages need, with mail-parser for the MIME walk.

mail-parser is used because it has years of fixes for real-world malformed MIME (bad charsets,
broken boundaries, epilogue defects) that a hand-written walk would have to rediscover.

Any byte sequence either parses or raises `ParseError` (the pipeline quarantines it): header
decoding never raises, and attachment filenames are display text only (control characters
removed, length capped), never a path.
"""

from __future__ import annotations

import base64
import email.header
import email.policy
import email.utils
import logging
import re
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser

import mailparser

# mail-parser logs undecodable header values, and attachment names, verbatim: both can name a
# child. Its lines stop at its own logger; parse defects are recorded in ParsedMessage.defects.
_mailparser_log = logging.getLogger("mailparser")
_mailparser_log.addHandler(logging.NullHandler())
_mailparser_log.propagate = False

MAX_FILENAME_CHARS = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


class ParseError(Exception):
    """The message cannot be parsed safely; the message never carries message content."""


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes


@dataclass
class ParsedMessage:
    headers: Message
    message_id: str | None
    from_addresses: list[str]
    subject: str
    references: list[str]
    attachments: list[Attachment] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)

    @property
    def sender(self) -> str | None:
        """The single From addr-spec, lower-cased; None when there is not exactly one."""
        return self.from_addresses[0] if len(self.from_addresses) == 1 else None

    def header_values(self, name: str) -> list[str]:
        return [str(v) for v in self.headers.get_all(name, [])]


def normalise_message_id(value: object) -> str | None:
    """`<id>` with no white space, or None. Takes any header value: with the compat32 policy a
    header holding raw 8-bit bytes comes back as an `email.header.Header`, not a str."""
    if not value:
        return None
    text = "".join(_CONTROL.sub("", str(value)).split())
    if not text:
        return None
    if not text.startswith("<"):
        text = f"<{text}>"
    return text


MAX_HEADER_BYTES = 4 * 1024 * 1024
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")


def read_headers(raw: bytes) -> Message:
    """Headers only, with the compat32 policy: it never raises on malformed headers.

    Only the header block is handed to the parser (up to the first blank line, at most
    MAX_HEADER_BYTES): given the whole message, the stdlib parser copies the body several
    times over even with headersonly, ~7x the message size at peak.
    """
    end = _BLANK_LINE.search(raw, 0, MAX_HEADER_BYTES)
    block = raw[: end.end()] if end else raw[:MAX_HEADER_BYTES]
    return BytesParser(policy=email.policy.compat32).parsebytes(block, headersonly=True)


def _addresses(headers: Message) -> list[str]:
    # Control characters (NUL among them) never belong in an address, nor in a database.
    values = [_CONTROL.sub(" ", str(v)) for v in headers.get_all("From", [])]
    out: list[str] = []
    try:
        pairs = email.utils.getaddresses(values)
    except Exception:  # an address parser error on hostile input: no genuine sender
        return [""] if values else []
    for _name, addr in pairs:
        addr = addr.strip()
        if addr and "@" in addr:
            out.append(addr.lower())
        elif values:
            # An unparseable From still counts, so "exactly one From" fails safely.
            out.append("")
    return out


def first_address(value: str) -> str | None:
    """The first addr-spec in a header value, lower-cased."""
    try:
        pairs = email.utils.getaddresses([_CONTROL.sub(" ", value)]) if value else []
    except Exception:
        return None
    for _name, addr in pairs:
        if "@" in addr:
            return addr.strip().lower()[:320]
    return None


def _decode_subject(headers: Message) -> str:
    raw = headers.get("Subject")
    if raw is None:
        return ""
    try:
        parts = email.header.decode_header(str(raw))
        text = str(email.header.make_header(parts))
    except Exception:  # HeaderParseError, an unknown charset, bad base64, ...
        text = str(raw)
    return " ".join(_CONTROL.sub(" ", text).split())


def display_filename(value: object) -> str:
    """An attachment's name for display and format sniffing only, never for a path."""
    text = _CONTROL.sub(" ", str(value or "")).strip()
    return " ".join(text.split())[:MAX_FILENAME_CHARS] or "attachment"


def parse_message(raw: bytes) -> ParsedMessage:
    headers = read_headers(raw)
    try:
        parsed = mailparser.parse_from_bytes(raw)
    except Exception as exc:  # mail-parser raises many kinds on hostile input
        raise ParseError(f"mail-parser failed: {type(exc).__name__}") from None
    attachments: list[Attachment] = []
    for att in parsed.attachments:
        payload = att.get("payload") or ""
        try:
            data = (
                base64.b64decode(payload)
                if att.get("binary")
                else str(payload).encode("utf-8", "surrogateescape")
            )
        except (ValueError, TypeError):
            raise ParseError("an attachment's encoding is corrupt") from None
        attachments.append(
            Attachment(
                filename=display_filename(att.get("filename")),
                content_type=str(att.get("mail_content_type") or "application/octet-stream"),
                data=data,
            )
        )
    facts = _header_facts(headers)
    facts.attachments = attachments
    facts.defects = sorted(parsed.defects_categories)
    return facts


def parse_headers(raw: bytes, headers: Message | None = None) -> ParsedMessage:
    """The header facts alone (no MIME walk, no attachments): for a message whose body could not
    be parsed, so that it can still be judged for an acknowledgement. `headers`, if given, is
    `read_headers(raw)` already done."""
    return _header_facts(headers if headers is not None else read_headers(raw))


def _header_facts(headers: Message) -> ParsedMessage:
    refs = " ".join(str(v) for v in headers.get_all("References", []))
    return ParsedMessage(
        headers=headers,
        message_id=normalise_message_id(headers.get("Message-ID")),
        from_addresses=_addresses(headers),
        subject=_decode_subject(headers),
        references=[r for r in refs.split() if r.startswith("<")],
    )
