"""Parse stage: raw bytes -> the facts later stages need, with mail-parser for the MIME walk.

mail-parser is used because it has years of fixes for real-world malformed MIME (bad charsets,
broken boundaries, epilogue defects) that a hand-written walk would have to rediscover.
"""

from __future__ import annotations

import base64
import email.header
import email.policy
import email.utils
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser

import mailparser


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


def normalise_message_id(value: str | None) -> str | None:
    if not value:
        return None
    value = "".join(value.split())
    if not value:
        return None
    if not value.startswith("<"):
        value = f"<{value}>"
    return value


def read_headers(raw: bytes) -> Message:
    """Headers only, with the compat32 policy: it never raises on malformed headers."""
    return BytesParser(policy=email.policy.compat32).parsebytes(raw, headersonly=True)


def _addresses(headers: Message) -> list[str]:
    values = [str(v) for v in headers.get_all("From", [])]
    out: list[str] = []
    for _name, addr in email.utils.getaddresses(values):
        addr = addr.strip()
        if addr and "@" in addr:
            out.append(addr.lower())
        elif values:
            # An unparseable From still counts, so "exactly one From" fails safely.
            out.append("")
    return out


def first_address(value: str) -> str | None:
    """The first addr-spec in a header value, lower-cased."""
    for _name, addr in email.utils.getaddresses([value]) if value else []:
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
    except (ValueError, LookupError, UnicodeError):
        text = str(raw)
    return " ".join(text.split())


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
                filename=str(att.get("filename") or "attachment"),
                content_type=str(att.get("mail_content_type") or "application/octet-stream"),
                data=data,
            )
        )
    refs = " ".join(str(v) for v in headers.get_all("References", []))
    return ParsedMessage(
        headers=headers,
        message_id=normalise_message_id(headers.get("Message-ID")),
        from_addresses=_addresses(headers),
        subject=_decode_subject(headers),
        references=[r for r in refs.split() if r.startswith("<")],
        attachments=attachments,
        defects=sorted(parsed.defects_categories),
    )
