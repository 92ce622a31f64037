"""Builds the hostile-message corpus: real-world-shaped messages built to break a mail bot.

`python tests/data/make_hostile.py` rewrites the small cases into `tests/data/hostile/*.eml`
(committed). The big ones (a 25 MB attachment, a 16 MB one, a ZIP bomb, a 1 MB header line) are
built at test time by `big_cases()` and never committed. `EXPECTED` is the outcome each case
must end in; `NOT_ANSWERED` lists the cases that must get no reply (every other case comes from
the approved sample school with a passing Authentication-Results header, and gets one).
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

from pypdf import PdfWriter

from cme_mailbot.forms.fill import fill_docx, fill_pdf
from cme_mailbot.samples import AUTHSERV_ID, SAMPLE_SENDER, referral_values

HOSTILE_DIR = Path(__file__).parent / "hostile"
DOMAIN = SAMPLE_SENDER.rsplit("@", 1)[-1]
TO = "cme-referrals@council.example.gov.uk"
FORM_DATE = dt.date(2026, 1, 15)  # fixed, so the corpus is the same on every run
PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


# ---- building blocks --------------------------------------------------------------------------


def headers(
    name: str,
    *,
    sender: str = SAMPLE_SENDER,
    auth: bool = True,
    subject: str | bytes = "CME referral",
    message_id: bool = True,
    extra: list[bytes] | None = None,
) -> bytes:
    lines: list[bytes] = []
    if auth:
        lines.append(
            f"Authentication-Results: {AUTHSERV_ID}; spf=pass smtp.mailfrom={DOMAIN}; "
            f"dmarc=pass header.from={DOMAIN}".encode()
        )
    lines.append(f"From: Riverside Primary School Office <{sender}>".encode())
    lines.append(f"To: {TO}".encode())
    lines.append(b"Subject: " + (subject if isinstance(subject, bytes) else subject.encode()))
    lines.append(b"Date: Thu, 15 Jan 2026 09:30:00 +0000")
    if message_id:
        lines.append(f"Message-ID: <hostile-{name}@{DOMAIN}>".encode())
    lines.extend(extra or [])
    return b"\r\n".join(lines) + b"\r\n"


def b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def part(content_type: str, filename: str, data: bytes) -> bytes:
    return (
        f'Content-Type: {content_type}; name="{filename}"\r\n'
        f'Content-Disposition: attachment; filename="{filename}"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + b64(data)


def multipart(head: bytes, parts: list[bytes], boundary: str = "hostile-boundary") -> bytes:
    body = b"--" + boundary.encode() + b"\r\n"
    body += b"Content-Type: text/plain; charset=utf-8\r\n\r\nPlease find attached.\r\n"
    for p in parts:
        body += b"--" + boundary.encode() + b"\r\n" + p + b"\r\n"
    body += b"--" + boundary.encode() + b"--\r\n"
    return (
        head
        + b"MIME-Version: 1.0\r\n"
        + f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'.encode()
        + body
    )


def with_attachments(name: str, attachments: list[tuple[str, str, bytes]]) -> bytes:
    return multipart(headers(name), [part(ct, fn, data) for fn, ct, data in attachments])


def form_pdf() -> bytes:
    return fill_pdf(referral_values(FORM_DATE))


def zip_bytes(entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for entry, data in entries.items():
            z.writestr(entry, data)
    return buf.getvalue()


def raw_pdf(objects: list[bytes], trailer: bytes, *, prev_self: bool = False) -> bytes:
    """A classic PDF with a correct xref table; `prev_self` makes the trailer's /Prev point at
    its own xref section (a /Prev loop)."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref_at = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    prev = f" /Prev {xref_at}".encode() if prev_self else b""
    out += b"trailer\n<< /Size " + str(len(objects) + 1).encode() + b" " + trailer + prev
    out += b" >>\nstartxref\n" + str(xref_at).encode() + b"\n%%EOF\n"
    return bytes(out)


CATALOG = b"<< /Type /Catalog /Pages 2 0 R /AcroForm 4 0 R >>"
PAGES = b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>"
PAGE = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>"


def pdf_circular() -> bytes:
    """Every reference loops: the field tree (/Kids back to the parent), the value (an
    indirect object that refers to itself through another), the page tree (a page that is its
    own parent's kid's parent)."""
    return raw_pdf(
        [
            CATALOG,
            b"<< /Type /Pages /Kids [2 0 R 3 0 R] /Count 2 /Parent 2 0 R >>",
            PAGE,
            b"<< /Fields [5 0 R] >>",
            b"<< /T (child_first_name) /FT /Tx /V 6 0 R /Kids [5 0 R 7 0 R] /Parent 5 0 R >>",
            b"7 0 R",
            b"<< /T (x) /Parent 5 0 R /Kids [5 0 R] /V 6 0 R >>",
        ],
        b"/Root 1 0 R",
    )


def pdf_prev_loop() -> bytes:
    return raw_pdf([CATALOG, PAGES, PAGE, b"<< /Fields [] >>"], b"/Root 1 0 R", prev_self=True)


def pdf_xrefstm_loop() -> bytes:
    """A hybrid-reference file: the classic table's trailer names an xref stream (/XRefStm)
    whose /Prev points back at the classic table, and startxref points at the stream."""
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate([CATALOG, PAGES, PAGE, b"<< /Fields [] >>"], start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    table_at = len(out)
    table = b"xref\n0 5\n0000000000 65535 f \n" + b"".join(
        f"{off:010d} 00000 n \n".encode() for off in offsets
    )
    # The stream's offset is known once the trailer is written: the trailer is fixed-width.
    trailer_len = len(b"trailer\n<< /Size 6 /Root 1 0 R /XRefStm 0000000000 >>\n")
    stream_at = table_at + len(table) + trailer_len
    out += table + f"trailer\n<< /Size 6 /Root 1 0 R /XRefStm {stream_at:010d} >>\n".encode()
    assert len(out) == stream_at
    data = b"\x01" + table_at.to_bytes(4, "big") + b"\x00"
    out += (
        f"5 0 obj\n<< /Type /XRef /Size 6 /W [1 4 1] /Index [5 1] /Prev {table_at} "
        f"/XRefStm {stream_at} /Length {len(data)} >>\nstream\n".encode()
        + data + b"\nendstream\nendobj\n"
    )  # fmt: skip
    out += f"startxref\n{stream_at}\n%%EOF\n".encode()
    return bytes(out)


def pdf_deep_arrays(depth: int = 20_000) -> bytes:
    nested = b"[" * depth + b"]" * depth
    return raw_pdf(
        [CATALOG, PAGES, PAGE, b"<< /Fields [5 0 R] >>", b"<< /T (child_first_name) /FT /Tx /V "
         + nested + b" >>"],
        b"/Root 1 0 R",
    )  # fmt: skip


def pdf_encrypted() -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(612, 792)
    writer.encrypt(user_password="", owner_password="owner", algorithm="AES-128")
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def docx_with_macros() -> bytes:
    docx = fill_docx(referral_values(FORM_DATE))
    with zipfile.ZipFile(io.BytesIO(docx)) as z:
        entries = {i.filename: z.read(i) for i in z.infolist()}
    entries["word/vbaProject.bin"] = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504)
    return zip_bytes(entries)


def fake_exe() -> bytes:
    stub = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + bytes(44)
    stub += b"\x80\x00\x00\x00" + b"\x0e\x1f\xba\x0e\x00\xb4\x09\xcd\x21\xb8\x01\x4c\xcd\x21"
    stub += b"This program cannot be run in DOS mode.\r\r\n$" + bytes(7)
    return stub + b"PE\x00\x00" + bytes(400)


def zip_bomb(inflated: int = 1 << 30) -> bytes:
    """A ZIP named .docx: a Word main part plus one entry that inflates to `inflated` bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("[Content_Types].xml", b"<Types/>")
        z.writestr("word/document.xml", b"<w:document/>")
        with z.open("word/media/image1.png", "w", force_zip64=True) as entry:
            chunk = bytes(1 << 24)
            for _ in range(inflated // len(chunk)):
                entry.write(chunk)
    return buf.getvalue()


def nested_mime(depth: int) -> bytes:
    out = b"Content-Type: text/plain\r\n\r\nthe bottom\r\n"
    for level in range(depth):
        boundary = f"b{level}".encode()
        out = (
            b"Content-Type: multipart/mixed; boundary=\"" + boundary + b"\"\r\n\r\n--" + boundary
            + b"\r\n" + out + b"\r\n--" + boundary + b"--\r\n"
        )  # fmt: skip
    return headers("deep_mime_nesting") + b"MIME-Version: 1.0\r\n" + out


# ---- the cases --------------------------------------------------------------------------------


def bad_charset() -> bytes:
    head = headers(
        "bad_charset",
        subject="=?x-no-such-charset?Q?CME_referral_=E9?= =?utf-8?B?!!!notbase64?=",
        extra=[b"Reply-To: =?bogus?B?Zm9v?= <attacker@example.net>"],
    )
    body_part = (
        b'Content-Type: text/plain; charset="x-unknown-8bit"\r\n'
        b"Content-Transfer-Encoding: 8bit\r\n\r\nR\xe9f\xe9rral \xff\xfe attached\r\n"
    )
    form = (
        b'Content-Type: application/pdf; name="=?x-bogus?Q?r=E9ferral?=.pdf"\r\n'
        b"Content-Disposition: attachment; filename*=x-bogus''r%E9f%FF.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + b64(form_pdf())
    )
    return multipart(head, [body_part, form])


def raw_8bit_headers() -> bytes:
    head = headers(
        "raw_8bit_headers",
        subject=b"Referral \xe9\xff\xc3(",
        extra=[b"X-Junk: \x80\x81\x82\xfe\xff", b"Comments: caf\xc3\xa9 \xe9t\xe9"],
    )
    head = head.replace(
        b"From: Riverside Primary School Office", b"From: Riverside Prim\xe4ry Sch\xf6\xf6l Office"
    )
    return multipart(head, [part(PDF, "referral.pdf", form_pdf())])


def missing_message_id() -> bytes:
    return headers("missing_message_id", message_id=False) + b"\r\nNo Message-ID here.\r\n"


def raw_8bit_message_id() -> bytes:
    """Raw 8-bit bytes in Message-ID: the compat32 parser returns a Header object, not a str
    (this once escaped the stage guard, in the claim step, and stopped the whole pass)."""
    head = headers("raw_8bit_message_id", message_id=False)
    return head + b"Message-ID: <\xe9\xff\x80-8bit@" + DOMAIN.encode() + b">\r\n\r\nHello.\r\n"


def duplicate_message_id() -> bytes:
    extra = [f"Message-ID: <second-id@{DOMAIN}>".encode()]
    return headers("duplicate_message_id", extra=extra) + b"\r\nTwo Message-IDs.\r\n"


def missing_from() -> bytes:
    head = headers("missing_from")
    head = b"".join(line for line in head.splitlines(True) if not line.startswith(b"From:"))
    return head + b"\r\nNo From header.\r\n"


def duplicate_from() -> bytes:
    extra = [b"From: Someone Else <head@riverside.sch.example.uk>"]
    return multipart(headers("duplicate_from", extra=extra), [part(PDF, "f.pdf", form_pdf())])


def deep_mime_nesting() -> bytes:
    return nested_mime(100)


def pdf_circular_xref() -> bytes:
    return with_attachments("pdf_circular_xref", [("referral.pdf", PDF, pdf_circular())])


def pdf_prev_loop_case() -> bytes:
    return with_attachments("pdf_prev_loop", [("referral.pdf", PDF, pdf_prev_loop())])


def pdf_xrefstm_loop_case() -> bytes:
    return with_attachments("pdf_xrefstm_loop", [("referral.pdf", PDF, pdf_xrefstm_loop())])


def pdf_deep_arrays_case() -> bytes:
    return with_attachments("pdf_deep_arrays", [("referral.pdf", PDF, pdf_deep_arrays())])


def docx_macros_case() -> bytes:
    return with_attachments("docx_with_macros", [("referral.docx", DOCX, docx_with_macros())])


def encrypted_pdf_case() -> bytes:
    return with_attachments("encrypted_pdf", [("referral.pdf", PDF, pdf_encrypted())])


def exe_named_pdf() -> bytes:
    return with_attachments("exe_named_pdf", [("form.pdf", PDF, fake_exe())])


def zip_named_pdf() -> bytes:
    archive = zip_bytes({"form.pdf": b"%PDF-1.4 inside a zip"})
    return with_attachments("zip_named_pdf", [("form.pdf", "application/octet-stream", archive)])


def pdf_named_png() -> bytes:
    return with_attachments("pdf_named_png", [("logo.png", "image/png", form_pdf())])


def many_attachments() -> bytes:
    parts = [part("text/plain", f"note-{i:03d}.txt", b"x") for i in range(500)]
    return multipart(headers("many_attachments"), parts)


def header_only() -> bytes:
    return headers("header_only").rstrip(b"\r\n")


def nul_bytes() -> bytes:
    head = headers("nul_bytes", subject=b"CME\x00referral")
    head += b"X-Nul: \x00\x00\x00\r\n"
    return head + b"\r\nBody with \x00 NUL \x00 bytes.\r\n\x00"


def unauthenticated_hostile() -> bytes:
    head = headers("unauthenticated_hostile", auth=False)
    return multipart(head, [part(PDF, "form.pdf", fake_exe()), part(PDF, "r.pdf", pdf_circular())])


def corrupt_base64() -> bytes:
    form = (
        b'Content-Type: application/pdf; name="referral.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + b64(form_pdf())[:-200] + b"!!!@@@***\r\n"
    )
    return multipart(headers("corrupt_base64"), [form])


def unterminated_multipart() -> bytes:
    head = headers("unterminated_multipart") + b"MIME-Version: 1.0\r\n"
    head += b'Content-Type: multipart/mixed; boundary="never-closed"\r\n\r\n--never-closed\r\n'
    return head + part(PDF, "referral.pdf", pdf_circular())[:300]


def random_bytes() -> bytes:
    import random

    rng = random.Random(5)  # deterministic
    return bytes(rng.randrange(256) for _ in range(4096))


SMALL: dict[str, Callable[[], bytes]] = {
    "bad_charset": bad_charset,
    "raw_8bit_headers": raw_8bit_headers,
    "missing_message_id": missing_message_id,
    "duplicate_message_id": duplicate_message_id,
    "raw_8bit_message_id": raw_8bit_message_id,
    "missing_from": missing_from,
    "duplicate_from": duplicate_from,
    "deep_mime_nesting": deep_mime_nesting,
    "pdf_circular_xref": pdf_circular_xref,
    "pdf_prev_loop": pdf_prev_loop_case,
    "pdf_xrefstm_loop": pdf_xrefstm_loop_case,
    "pdf_deep_arrays": pdf_deep_arrays_case,
    "docx_with_macros": docx_macros_case,
    "encrypted_pdf": encrypted_pdf_case,
    "exe_named_pdf": exe_named_pdf,
    "zip_named_pdf": zip_named_pdf,
    "pdf_named_png": pdf_named_png,
    "many_attachments": many_attachments,
    "header_only": header_only,
    "nul_bytes": nul_bytes,
    "unauthenticated_hostile": unauthenticated_hostile,
    "corrupt_base64": corrupt_base64,
    "unterminated_multipart": unterminated_multipart,
    "random_bytes": random_bytes,
}


def attachment_25mb() -> bytes:
    """Over the message cap (30 MB once base64-encoded): quarantined without being read."""
    return with_attachments("attachment_25mb", [("scan.pdf", PDF, b"%PDF-1.4\n" + bytes(25 << 20))])


def attachment_16mb() -> bytes:
    """Under the message cap but over the attachment cap (15 MB): parsed, then quarantined."""
    return with_attachments("attachment_16mb", [("scan.pdf", PDF, b"%PDF-1.4\n" + bytes(16 << 20))])


def zip_bomb_docx() -> bytes:
    return with_attachments("zip_bomb_docx", [("referral.docx", DOCX, zip_bomb())])


def long_header_line() -> bytes:
    extra = [b"X-Long: " + b"a" * (1 << 20), b"Subject-Extra: " + b"=?utf-8?q?x?= " * 20_000]
    return headers("long_header_line", extra=extra) + b"\r\nA very long header line.\r\n"


BIG: dict[str, Callable[[], bytes]] = {
    "attachment_25mb": attachment_25mb,
    "attachment_16mb": attachment_16mb,
    "zip_bomb_docx": zip_bomb_docx,
    "long_header_line": long_header_line,
}

# The one outcome each case must end in.
EXPECTED: dict[str, str] = {
    "bad_charset": "processed",
    "raw_8bit_headers": "processed",
    "missing_message_id": "no_form",
    "duplicate_message_id": "no_form",
    "raw_8bit_message_id": "no_form",
    "missing_from": "unauthenticated_sender",
    "duplicate_from": "unauthenticated_sender",
    "deep_mime_nesting": "no_form",
    "pdf_circular_xref": "quarantined",
    "pdf_prev_loop": "no_form",  # qpdf rebuilds the xref; empty /Fields: not a form
    "pdf_xrefstm_loop": "quarantined",
    "pdf_deep_arrays": "quarantined",
    "docx_with_macros": "quarantined",
    "encrypted_pdf": "quarantined",
    "exe_named_pdf": "quarantined",
    "zip_named_pdf": "quarantined",
    "pdf_named_png": "quarantined",
    "many_attachments": "quarantined",
    "header_only": "no_form",
    "nul_bytes": "no_form",
    "unauthenticated_hostile": "unauthenticated_sender",
    "corrupt_base64": "quarantined",
    "unterminated_multipart": "quarantined",
    "random_bytes": "unauthenticated_sender",
    "attachment_25mb": "quarantined",
    "attachment_16mb": "quarantined",
    "zip_bomb_docx": "quarantined",
    "long_header_line": "no_form",
}

# Cases whose From cannot be shown genuine: never answered (no backscatter).
UNAUTHENTICATED = frozenset(
    {"missing_from", "duplicate_from", "unauthenticated_hostile", "random_bytes"}
)
# Not answered either: a message over the size cap is quarantined without being downloaded, so
# its sender is never checked. Every other case has an approved, genuine sender: one reply.
NOT_ANSWERED = UNAUTHENTICATED | {"attachment_25mb"}


def big_cases() -> dict[str, bytes]:
    return {name: build() for name, build in BIG.items()}


def write_small(directory: Path = HOSTILE_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in SMALL.items():
        path = directory / f"{name}.eml"
        path.write_bytes(build())
        written.append(path)
    return written


def load_small(directory: Path = HOSTILE_DIR) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in sorted(directory.glob("*.eml"))}


if __name__ == "__main__":
    for path in write_small():
        print(f"{path.stat().st_size:>9}  {path}", file=sys.stdout)
