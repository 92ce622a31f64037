"""The original email behind a referral or a quarantined message, as a reviewer reads it:
headers and the plain-text body, and its attachments to download (never opened here)."""

from __future__ import annotations

import email.policy
import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser

from sqlmodel import Session
from starlette.responses import Response

from cme_mailbot import quarantine
from cme_mailbot.models import MessageBlob

MAX_BODY_CHARS = 100_000


@dataclass(frozen=True)
class Original:
    headers: list[tuple[str, str]]
    body: str | None
    attachments: list[quarantine.AttachmentInfo]


def read_original(s: Session, inbound_id: int) -> Original | None:
    blob = s.get(MessageBlob, inbound_id)
    if blob is None:
        return None
    msg = BytesParser(policy=email.policy.default).parsebytes(blob.raw)
    assert isinstance(msg, EmailMessage)
    headers = []
    for key, value in msg.items():
        try:
            headers.append((key, str(value)))
        except Exception:  # a header too broken to decode is shown raw
            headers.append((key, repr(value)))
    body: str | None = None
    try:
        part = msg.get_body(preferencelist=("plain",))
        if part is not None:
            body = str(part.get_content())[:MAX_BODY_CHARS]
    except Exception:  # a malformed body is the sender's problem, not the console's
        body = None
    return Original(headers, body, quarantine.attachments(s, inbound_id))


_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")


def download(s: Session, inbound_id: int, index: int) -> Response:
    """An attachment as a download, never rendered by the browser: it came from outside."""
    try:
        filename, _content_type, data = quarantine.attachment_bytes(s, inbound_id, index)
    except quarantine.QuarantineError:
        from starlette.exceptions import HTTPException

        raise HTTPException(404) from None
    safe = _UNSAFE.sub("_", filename).strip(" .")[:120] or f"attachment-{index}"
    return Response(
        data,
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{safe}"',
            "Content-Security-Policy": "sandbox; default-src 'none'",
        },
    )
