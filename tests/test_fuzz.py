"""Property-based fuzzing of the parse and extract stages and of the whole pipeline.

Every byte sequence must end in one recorded outcome (quarantined at worst): the parse stage
returns a ParsedMessage or raises ParseError, the extract stage returns an Extraction, and the
pipeline files every message out of the inbox. Runs are bounded and derandomized, so CI sees the
same examples every time.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cme_mailbot.config import LimitsSettings
from cme_mailbot.forms import read_form
from cme_mailbot.forms.fill import fill_docx, fill_pdf
from cme_mailbot.samples import AUTHSERV_ID, SAMPLE_SENDER, referral_email, referral_values
from cme_mailbot.sandbox import SandboxedReader
from cme_mailbot.stages.extract import Extraction, extract_forms
from cme_mailbot.stages.parse import Attachment, ParsedMessage, ParseError, parse_message

from .data import make_hostile as hostile
from .data.harness import Bot

BOUNDED: dict[str, Any] = dict(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DOMAIN = SAMPLE_SENDER.rsplit("@", 1)[-1]


@cache
def good_forms() -> dict[str, bytes]:
    values = referral_values(dt.date(2026, 1, 15))
    return {"pdf": fill_pdf(values), "docx": fill_docx(values)}


@cache
def good_message() -> bytes:
    forms = good_forms()
    return referral_email(
        message_id=f"<fuzz-seed@{DOMAIN}>",
        attachments=[("referral.pdf", forms["pdf"]), ("referral.docx", forms["docx"])],
    )


good_message()  # built now: the email package draws MIME boundaries from `random`


# ---- strategies ------------------------------------------------------------------------------


def mutate(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """Apply (position, delete-count, insert) edits, positions taken modulo the length."""
    out = bytearray(data)
    for pos, delete, insert in edits:
        at = pos % (len(out) + 1)
        out[at : at + delete] = insert
    return bytes(out)


EDITS = st.lists(
    st.tuples(
        st.integers(0, 1 << 30),
        st.integers(0, 64),
        st.binary(max_size=16) | st.sampled_from([b"\r\n", b"\r\n\r\n", b"--", b"=?", b"\x00"]),
    ),
    min_size=1,
    max_size=8,
)
HEADER_NAMES = st.sampled_from(
    ["From", "Message-ID", "Subject", "Content-Type", "Content-Transfer-Encoding", "MIME-Version",
     "References", "Reply-To", "Auto-Submitted", "Authentication-Results", "X-Junk", "To"]
)  # fmt: skip
HEADER_VALUES = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from(
        [b"=?x-unknown?Q?=E9?=", b"=?utf-8?B?!!!?=", b"multipart/mixed; boundary=", b"base64",
         b'multipart/mixed; boundary="b"', b"<>", b"<@>", b"a@b, c@d", b"\xff\xfe", b""]
    ),
)  # fmt: skip


@st.composite
def mime_body(draw: st.DrawFn, depth: int = 0) -> bytes:
    kind = draw(st.sampled_from(["text", "attachment", "multipart"] if depth < 6 else ["text"]))
    if kind == "text":
        charset = draw(st.sampled_from([b"utf-8", b"x-bogus", b"iso-8859-1", b""]))
        return b"Content-Type: text/plain; charset=" + charset + b"\r\n\r\n" + draw(st.binary())
    if kind == "attachment":
        data = draw(attachment_bytes())
        ctype = draw(st.sampled_from([b"application/pdf", hostile.DOCX.encode(), b"image/png",
                                      b"application/octet-stream"]))  # fmt: skip
        name = draw(st.sampled_from([b"referral.pdf", b"form.docx", b"x", b"../../etc/passwd"]))
        cte = draw(st.sampled_from([b"base64", b"quoted-printable", b"8bit", b"x-uuencode"]))
        encoded = hostile.b64(data) if cte == b"base64" else data
        return (
            b"Content-Type: " + ctype + b'; name="' + name + b'"\r\n'
            b'Content-Disposition: attachment; filename="' + name + b'"\r\n'
            b"Content-Transfer-Encoding: " + cte + b"\r\n\r\n" + encoded
        )
    boundary = draw(st.sampled_from([b"b1", b"b2", b"", b"--", b"x" * 80]))
    parts = draw(st.lists(mime_body(depth + 1), max_size=3))
    body = b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts)
    closing = draw(st.sampled_from([b"--" + boundary + b"--\r\n", b""]))
    return b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n' + body + closing


@st.composite
def attachment_bytes(draw: st.DrawFn) -> bytes:
    forms = good_forms()
    base = draw(
        st.sampled_from(
            [b"", b"%PDF-1.7\n", forms["pdf"], forms["docx"], hostile.pdf_circular(),
             hostile.zip_bytes({"word/document.xml": b"<w:document/>"}), hostile.fake_exe()]
        )
    )  # fmt: skip
    if draw(st.booleans()):
        return base + draw(st.binary(max_size=512))
    return mutate(base, draw(EDITS)) if base else draw(st.binary(max_size=512))


@st.composite
def messages(draw: st.DrawFn, authenticated: bool = True) -> bytes:
    """A message shaped like mail, with hostile headers and MIME; mostly from the approved,
    authenticated sample school, so the attachments reach the extract stage."""
    how = draw(st.sampled_from(["structured", "mutated"]))
    if how == "mutated":
        return mutate(good_message(), draw(EDITS))
    lines = []
    if authenticated and draw(st.integers(0, 9)) > 0:
        lines.append(
            f"Authentication-Results: {AUTHSERV_ID}; dmarc=pass header.from={DOMAIN}".encode()
        )
        lines.append(f"From: School <{SAMPLE_SENDER}>".encode())
    for name, value in draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=8)):
        lines.append(name.encode() + b": " + value.replace(b"\n", b" "))
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    return eol.join(lines) + eol + b"MIME-Version: 1.0" + eol + draw(mime_body())


# ---- the parse stage -------------------------------------------------------------------------


def parses_or_refuses(raw: bytes) -> ParsedMessage | None:
    try:
        parsed = parse_message(raw)
    except ParseError as exc:
        assert str(exc)
        return None
    assert isinstance(parsed, ParsedMessage)
    for att in parsed.attachments:
        assert isinstance(att.data, bytes)
        assert len(att.filename) <= 255 and not any(ord(c) < 32 for c in att.filename)
    return parsed


@settings(max_examples=500, **BOUNDED)
@given(st.binary(max_size=4096))
def test_any_bytes_parse_or_are_refused(raw: bytes) -> None:
    parses_or_refuses(raw)


@settings(max_examples=400, **BOUNDED)
@given(messages())
def test_hostile_mime_parses_or_is_refused(raw: bytes) -> None:
    parses_or_refuses(raw)


# ---- the extract stage -----------------------------------------------------------------------

ATTACHMENTS = st.lists(
    st.builds(
        Attachment,
        filename=st.sampled_from(["referral.pdf", "form.docx", "logo.png", "x", "a.docm", ""]),
        content_type=st.sampled_from(["application/pdf", hostile.DOCX, "image/png", "", "x/y"]),
        data=attachment_bytes(),
    ),
    max_size=4,
)


@settings(max_examples=300, **BOUNDED)
@given(ATTACHMENTS)
def test_any_attachments_extract_to_forms_or_reasons(attachments: list[Attachment]) -> None:
    out = extract_forms(attachments, read_form, LimitsSettings())
    assert isinstance(out, Extraction)
    assert all(isinstance(r, str) and r for r in out.unreadable)


SANDBOX = SandboxedReader(LimitsSettings(parse_cpu_seconds=5, parse_timeout_seconds=10))


@settings(max_examples=60, **BOUNDED)
@given(ATTACHMENTS)
def test_any_attachments_extract_in_the_sandbox_as_in_process(
    attachments: list[Attachment],
) -> None:
    direct = extract_forms(attachments, read_form)
    sandboxed = extract_forms(attachments, SANDBOX)
    assert [f.fields for f in sandboxed.forms] == [f.fields for f in direct.forms]
    assert bool(sandboxed.unreadable) == bool(direct.unreadable)


# ---- the whole pipeline ----------------------------------------------------------------------


@settings(max_examples=40, **BOUNDED)
@given(st.lists(messages(), min_size=1, max_size=4))
def test_every_fuzzed_message_gets_one_outcome_and_leaves_the_inbox(raws: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        bot = Bot(Path(tmp), SANDBOX)
        # A unique first Message-ID each, so no two are (rightly) taken as one re-delivery.
        bot.deliver(
            *(f"Message-ID: <fuzz-{i}@{DOMAIN}>\r\n".encode() + raw for i, raw in enumerate(raws))
        )
        summary = bot.poll()
        assert summary.errors == []
        assert summary.done == len(raws)
        rows = bot.messages()
        assert len(rows) == len(raws)
        assert all(r["outcome"] is not None and r["state"] == "filed" for r in rows)
        assert bot.inbox() == []
        assert set(bot.sent_to()) <= {SAMPLE_SENDER}
        bot.engine.dispose()
