"""`Renderer.compose` writes the reply MIME by hand: it must be the message `Renderer.build` makes.

Every case composes and builds the same reply, parses compose's bytes back with the email
package and compares header values and decoded parts; then checks the bytes as they go on the
wire: CRLF only, short lines, no defects, a boundary that appears nowhere in a body.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest

from cme_mailbot.render import Renderer, Threading

FROM_ADDRESS = "cme-referrals@council.example.gov.uk"
FROM_NAME = "Children Missing Education team"
SCHOOL = "head@stmarys.example.sch.uk"
FIXED_DATE = "Mon, 02 Mar 2026 09:15:00 -0000"
MESSAGE_ID = "<reply.1234@council.example.gov.uk>"
INBOUND_ID = "<CAF1x2y3.referral@mail.stmarys.example.sch.uk>"

COMMON: dict[str, Any] = {  # as Composer.common() gives it
    "council": "Luton Borough Council",
    "team": "Children Missing Education team",
    "team_phone": "01582 548016",
    "team_email": FROM_ADDRESS,
    "mash_phone": "01582 547653",
    "mash_email": "mash@council.example.gov.uk",
    "contacts_help": "ask your headteacher to email the CME team from the school's address",
}

FORMS: list[dict[str, Any]] = [
    {
        "filename": "CME referral - year 7.pdf",
        "result": "accepted",
        "reference": "CME-2026-00042",
        "child": "child 1 of 3",
        "reasons": [],
        "duplicate_of": None,
        "safeguarding": True,
    },
    {
        "filename": "sibling.docx",
        "result": "duplicate",
        "reference": "CME-2025-00917",
        "child": "child 2 of 3",
        "reasons": [],
        "duplicate_of": "CME-2025-00917",
        "safeguarding": False,
    },
    {
        "filename": "third form.docx",
        "result": "rejected",
        "reference": None,
        "child": "child 3 of 3",
        "reasons": [
            "The date of birth is missing.",
            "The school's URN is not a six-digit number.",
        ],
        "duplicate_of": None,
        "safeguarding": False,
    },
]


def processed(subject: str = "CME referral", **extra: Any) -> dict[str, Any]:
    return {
        **COMMON,
        "outcome": "processed",
        "subject": subject,
        "any_safeguarding": True,
        "forms": FORMS,
        **extra,
    }


# A context value written to the text and HTML parts with all that quoted-printable and SMTP
# must escape: "=" signs, trailing spaces and tabs, a line beginning "From ", a line that is just
# "." (SMTP's end of data), a line like a boundary, a line far longer than 76, non-ASCII.
HOSTILE_REASONS = [
    "Field a=b and =3D and =\nnext line",
    "trailing spaces   \nand a trailing tab\t\nend",
    "From the school office\nFrom here on",
    "line one\n.\nline three",
    ".",
    "--===============cme0123456789abcdef0123==\n--boundary--",
    "x" * 200,
    "Zoë Brontë-Łukasiewicz — “quoted” 😀 " * 6,
    "old mac line\rend\r\nwindows line",
]


def hostile() -> dict[str, Any]:
    form = {**FORMS[2], "reasons": HOSTILE_REASONS, "child": "=?utf-8?q?=C3=A9?= ."}
    return processed(
        subject="a = b  =?utf-8?q?x?=",
        team="From Luton",
        council=".",
        forms=[FORMS[0], form],
    )


@dataclass(frozen=True)
class Case:
    template: str
    context: Mapping[str, Any]
    from_name: str = FROM_NAME
    to: Sequence[str] = (SCHOOL,)
    thread: Threading | None = field(default_factory=lambda: Threading(INBOUND_ID, ()))


LONG_SUBJECT = " ".join(
    ["Children Missing Education referral for the pupils who left in the spring term"] * 4
)
REFERENCES = [f"<thread.{i}.abcdefghij@mail.stmarys.example.sch.uk>" for i in range(8)]

CASES = {
    "plain-ascii": Case("reply_processed", processed()),
    "non-ascii-subject-and-from-name": Case(
        "reply_processed",
        processed(subject="Référral – Zoë"),
        from_name="Équipe CME",
    ),
    "long-ascii-subject": Case("reply_processed", processed(subject=LONG_SUBJECT)),
    "long-non-ascii-subject": Case(
        "reply_processed", processed(subject="Référral – Zoë – élève absente " * 6)
    ),
    "thread-with-references": Case(
        "reply_processed", processed(), thread=Threading(INBOUND_ID, REFERENCES)
    ),
    "no-thread": Case("reply_processed", processed(), thread=None),
    "thread-without-message-id": Case("reply_processed", processed(), thread=Threading(None)),
    "hostile-context": Case("reply_processed", hostile()),
    "no-safeguarding-no-phone": Case(
        "reply_processed",
        processed(any_safeguarding=False, team_phone=None, forms=FORMS[1:]),
    ),
    "no-form": Case("reply_no_form", {**COMMON, "outcome": "no_form", "subject": "Referral"}),
    "quarantined": Case(
        "reply_quarantined", {**COMMON, "outcome": "quarantined", "subject": "Scan"}
    ),
    "unapproved-sender": Case(
        "reply_unapproved_sender",
        {**COMMON, "outcome": "unauthenticated_sender", "subject": "your email"},
    ),
    "safeguarding-alert": Case(
        "safeguarding_alert",
        {
            **COMMON,
            "alerts": [
                {
                    "reference": "CME-2026-00042",
                    "result": "accepted",
                    "school_name": "St Mary’s C of E Primary",
                    "school_urn": "109876",
                    "referrer_name": "Mrs Ó Súilleabháin",
                    "referrer_phone": "01582 000111",
                    "referrer_email": "dsl@stmarys.example.sch.uk",
                    "ledger_id": 17,
                },
                {
                    "reference": None,
                    "result": "rejected",
                    "school_name": "Ferrars Academy",
                    "school_urn": "",
                    "referrer_name": "",
                    "referrer_phone": "",
                    "referrer_email": "",
                    "ledger_id": 17,
                },
            ],
        },
        to=("cme-officer@council.example.gov.uk", "dslead@council.example.gov.uk"),
        thread=None,
    ),
}


@pytest.fixture(autouse=True)
def fixed_date(monkeypatch: pytest.MonkeyPatch) -> None:
    """compose and build each ask for the time: the same second for both."""

    def formatdate(
        timeval: float | None = None, localtime: bool = False, usegmt: bool = False
    ) -> str:
        return FIXED_DATE

    monkeypatch.setattr(email.utils, "formatdate", formatdate)


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def compose_and_build(
    renderer: Renderer, case: Case, message_id: str | None = MESSAGE_ID
) -> tuple[str, bytes, EmailMessage]:
    kwargs: dict[str, Any] = {
        "from_address": FROM_ADDRESS,
        "from_name": case.from_name,
        "to": list(case.to),
        "thread": case.thread,
        "message_id": message_id,
    }
    msg_id, raw = renderer.compose(case.template, case.context, **kwargs)
    built = renderer.build(case.template, case.context, **kwargs)
    return msg_id, raw, built


def text_parts(msg: EmailMessage) -> list[EmailMessage]:
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    typed = [p for p in parts if isinstance(p, EmailMessage)]
    assert len(typed) == 2
    return typed


def content(part: EmailMessage) -> str:
    """The part's decoded text. A quoted-printable body parsed from CRLF bytes keeps its CRLFs
    (build's own message does too once sent); line breaks are what count, not their bytes."""
    text = part.get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")


def assert_same_message(msg: EmailMessage, built: EmailMessage, *, same_id: bool = True) -> None:
    """Every header of build's message, with an equal value; the same decoded parts."""
    assert sorted(msg.keys()) == sorted(built.keys())
    for name, value in built.items():
        assert len(msg.get_all(name, [])) == 1, name
        if name == "Content-Type":
            assert msg.get_content_type() == built.get_content_type()
            params = {k: v for k, v in msg["Content-Type"].params.items() if k != "boundary"}
            expected = {k: v for k, v in built["Content-Type"].params.items() if k != "boundary"}
            assert params == expected
        elif name == "Message-ID" and not same_id:
            continue
        else:
            assert str(msg[name]) == str(value), name
    ours, theirs = text_parts(msg), text_parts(built)
    for mine, other in zip(ours, theirs, strict=True):
        assert mine.get_content_charset() == "utf-8"
        assert content(mine) == content(other)


def assert_clean_wire(raw: bytes, body_limit: int = 76) -> None:
    """CRLF line endings only; headers within 78 columns, body lines within 76 (RFC 2045's limit
    for quoted-printable; the email package's own encoder, and so build, goes to 78); no defects;
    no line that is a lone "."; the boundary in no body."""
    assert raw.endswith(b"\r\n")
    assert b"\r" not in raw.replace(b"\r\n", b""), "bare CR"
    assert b"\n" not in raw.replace(b"\r\n", b""), "bare LF"
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep
    for line in head.split(b"\r\n"):
        assert len(line) <= 78, line
    lines = body.split(b"\r\n")
    assert lines[-1] == b""
    for line in lines[:-1]:
        assert len(line) <= body_limit, line
        assert line != b".", "a line SMTP would take for the end of data"
        assert line.isascii(), line

    msg = parse(raw)
    assert msg.defects == []
    for part in msg.walk():
        assert part.defects == [], part.get_content_type()
    boundary = msg.get_boundary()
    assert boundary
    delimiter = f"--{boundary}".encode()
    assert raw.count(delimiter) == 3  # two parts and the close
    assert raw.endswith(delimiter + b"--\r\n")
    for sub in msg.iter_parts():
        payload = sub.get_payload(decode=True)
        assert isinstance(payload, bytes)
        assert boundary.encode() not in payload
        encoded = sub.get_payload()
        assert isinstance(encoded, str)
        assert boundary not in encoded


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_compose_is_the_message_build_makes(renderer: Renderer, case: Case) -> None:
    msg_id, raw, built = compose_and_build(renderer, case)
    assert msg_id == MESSAGE_ID
    msg = parse(raw)
    assert_same_message(msg, built)
    assert_clean_wire(raw)
    # It takes the fast path: build's boundaries are "===============<digits>==".
    assert re.fullmatch(r"===============cme[0-9a-f]{20}==", msg.get_boundary() or "")


# The email package's header folder (build's message as sent) drops the space between two
# encoded words of a long non-ASCII subject ("absenteRéférral"): its bug, not compose's.
SENT_CASES = [
    pytest.param(
        case,
        id=name,
        marks=[pytest.mark.xfail(strict=True, reason="email package folding loses a space")]
        if name == "long-non-ascii-subject"
        else [],
    )
    for name, case in CASES.items()
]


@pytest.mark.parametrize("case", SENT_CASES)
def test_compose_bytes_are_what_build_parses_to(renderer: Renderer, case: Case) -> None:
    """The same again against build's message as sent (SMTP policy) and parsed back."""
    _, raw, built = compose_and_build(renderer, case)
    sent = parse(built.as_bytes(policy=email.policy.SMTP))
    assert_same_message(parse(raw), sent)


def test_threading_headers(renderer: Renderer) -> None:
    case = Case("reply_processed", processed(), thread=Threading(INBOUND_ID, REFERENCES))
    _, raw, _ = compose_and_build(renderer, case)
    msg = parse(raw)
    assert str(msg["In-Reply-To"]) == INBOUND_ID
    assert str(msg["References"]).split() == [*REFERENCES, INBOUND_ID]
    assert str(msg["Auto-Submitted"]) == "auto-replied"
    assert str(msg["X-Auto-Response-Suppress"]) == "All"
    assert b"\r\nReferences: " in raw
    assert b"\r\n <thread.7." in raw  # folded, not one long line


@pytest.mark.parametrize(
    ("thread", "auto_submitted"),
    [(None, "auto-generated"), (Threading(None, ("<x@y>",)), "auto-replied")],
    ids=["no-thread", "thread-without-message-id"],
)
def test_no_threading_headers(
    renderer: Renderer, thread: Threading | None, auto_submitted: str
) -> None:
    _, raw, _ = compose_and_build(
        renderer, Case("reply_no_form", CASES["no-form"].context, thread=thread)
    )
    msg = parse(raw)
    assert msg["In-Reply-To"] is None
    assert msg["References"] is None
    assert str(msg["Auto-Submitted"]) == auto_submitted


def test_non_ascii_subject_and_name_are_encoded_words(renderer: Renderer) -> None:
    _, raw, _ = compose_and_build(renderer, CASES["non-ascii-subject-and-from-name"])
    assert raw.isascii()
    msg = parse(raw)
    assert str(msg["Subject"]).startswith("Re: Référral – Zoë - ")
    assert msg["From"].addresses[0].display_name == "Équipe CME"
    assert msg["From"].addresses[0].addr_spec == FROM_ADDRESS


def test_long_subject_is_folded_and_round_trips(renderer: Renderer) -> None:
    _, raw, built = compose_and_build(renderer, CASES["long-ascii-subject"])
    head = raw.partition(b"\r\n\r\n")[0].decode()
    subject_lines = re.search(r"^Subject: .*?(?=\r\n\S)", head, re.S | re.M)
    assert subject_lines is not None
    assert subject_lines.group().count("\r\n ") >= 3
    assert str(parse(raw)["Subject"]) == str(built["Subject"])
    assert str(built["Subject"]).startswith(f"Re: {LONG_SUBJECT} - ")


def test_hostile_values_survive_quoted_printable(renderer: Renderer) -> None:
    _, raw, _ = compose_and_build(renderer, CASES["hostile-context"])
    text, html = (content(p) for p in text_parts(parse(raw)))
    assert "   - Field a=b and =3D and =\nnext line\n" in text
    assert "trailing spaces   \nand a trailing tab\t\nend" in text
    assert "   - From the school office\nFrom here on\n" in text
    assert "\n.\nline three" in text
    assert "\nFrom Luton, .\n" in text
    assert "old mac line\nend\nwindows line" in text
    assert "x" * 200 in text
    assert "Zoë Brontë-Łukasiewicz — “quoted” 😀" in html
    body = raw.partition(b"\r\n\r\n")[2]
    assert b"=3D" in body
    assert b" \r\n" not in body and b"\t\r\n" not in body  # trailing white space is encoded
    assert b"\r\n.\r\n" not in body


def test_message_id_made_when_not_given(renderer: Renderer) -> None:
    case = CASES["plain-ascii"]
    first, raw, built = compose_and_build(renderer, case, message_id=None)
    second, raw2, _ = compose_and_build(renderer, case, message_id=None)
    assert first != second
    assert str(parse(raw)["Message-ID"]) == first
    assert str(parse(raw2)["Message-ID"]) == second
    assert re.fullmatch(r"<[^<>@\s]+@council\.example\.gov\.uk>", first)
    assert_same_message(parse(raw), built, same_id=False)
    assert_clean_wire(raw)


def test_boundary_is_random(renderer: Renderer) -> None:
    case = CASES["plain-ascii"]
    boundaries = {parse(compose_and_build(renderer, case)[1]).get_boundary() for _ in range(5)}
    assert len(boundaries) == 5


def test_real_date_header(renderer: Renderer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()
    _, raw = renderer.compose(
        "reply_no_form", CASES["no-form"].context, from_address=FROM_ADDRESS,
        from_name=FROM_NAME, to=[SCHOOL],
    )  # fmt: skip
    date = parse(raw)["Date"]
    assert date.defects == ()
    assert date.datetime is not None
    assert str(date).endswith(" -0000")  # UTC, as build writes it


@pytest.mark.parametrize(
    "kwargs",
    [
        {"to": ["zoë@stmarys.example.sch.uk"]},
        {"to": ["head@école.example.sch.uk"]},
        {"to": [SCHOOL, "bursar\t@stmarys.example.sch.uk"]},
        {"thread": Threading("<référral@mail.example.sch.uk>", ())},
        {"thread": Threading(INBOUND_ID, ("<ok@x>", "<ré@x>"))},
    ],
    ids=[
        "non-ascii-local-part",
        "non-ascii-domain",
        "tab-in-address",
        "non-ascii-id",
        "non-ascii-ref",
    ],
)
def test_unusual_values_go_through_build(renderer: Renderer, kwargs: dict[str, Any]) -> None:
    case = Case("reply_processed", processed(subject="Référral – Zoë"))
    args: dict[str, Any] = {
        "from_address": FROM_ADDRESS,
        "from_name": FROM_NAME,
        "to": [SCHOOL],
        "thread": case.thread,
        **kwargs,
    }
    msg_id, raw = renderer.compose(case.template, case.context, **args)
    msg = parse(raw)
    assert str(msg["Message-ID"]) == msg_id
    assert re.fullmatch(r"<[^<>@\s]+@council\.example\.gov\.uk>", msg_id)
    # build's boundary, not compose's: it went the long way.
    assert not (msg.get_boundary() or "").startswith("===============cme")
    built = renderer.build(case.template, case.context, **args, message_id=msg_id)
    assert_same_message(msg, built)
    assert_same_message(msg, parse(built.as_bytes(policy=email.policy.SMTP)))
    assert_clean_wire(raw, body_limit=78)


def test_message_id_passed_through_build_when_unusual(renderer: Renderer) -> None:
    msg_id, raw = renderer.compose(
        "reply_no_form", CASES["no-form"].context, from_address=FROM_ADDRESS,
        from_name=FROM_NAME, to=["zoë@stmarys.example.sch.uk"], message_id=MESSAGE_ID,
    )  # fmt: skip
    assert msg_id == MESSAGE_ID
    assert str(parse(raw)["Message-ID"]) == MESSAGE_ID


def assert_no_injection(renderer: Renderer, **kwargs: Any) -> None:
    args: dict[str, Any] = {
        "from_address": FROM_ADDRESS,
        "from_name": FROM_NAME,
        "to": [SCHOOL],
        "thread": Threading(INBOUND_ID),
        **kwargs,
    }
    try:
        _, raw = renderer.compose("reply_processed", processed(), **args)
    except ValueError:
        return  # build refuses a header value with a line break: nothing is sent
    msg = parse(raw)
    assert msg["Bcc"] is None
    assert msg["X-Injected"] is None
    assert b"\r\nBcc:" not in raw and b"\nBcc:" not in raw
    assert msg.defects == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"thread": Threading("<a@b>\r\nBcc: x@y")},
        {"thread": Threading("<a@b>\nBcc: x@y")},
        {"thread": Threading("<a@b>\rBcc: x@y")},
        {"thread": Threading(INBOUND_ID, ("<a@b>\r\nBcc: x@y",))},
        {"to": [f"{SCHOOL}\r\nBcc: x@y"]},
        {"message_id": "<m@council.example.gov.uk>\r\nBcc: x@y"},
        {"from_address": "cme@council.example.gov.uk\r\nBcc: x@y"},
    ],
    ids=["in-reply-to-crlf", "in-reply-to-lf", "in-reply-to-cr", "references", "to",
         "message-id", "from-address"],
)  # fmt: skip
def test_header_injection_is_refused(renderer: Renderer, kwargs: dict[str, Any]) -> None:
    assert_no_injection(renderer, **kwargs)


def test_subject_cannot_inject_headers(renderer: Renderer) -> None:
    """The school's subject is the sender's text: white space, line breaks included, is
    collapsed before it is written."""
    context = processed(subject="Referral\r\nBcc: x@y\r\n\r\nbody")
    _, raw = renderer.compose("reply_processed", context, from_address=FROM_ADDRESS,
                              from_name=FROM_NAME, to=[SCHOOL])  # fmt: skip
    msg = parse(raw)
    assert msg["Bcc"] is None
    assert str(msg["Subject"]).startswith("Re: Referral Bcc: x@y body - ")
    assert_clean_wire(raw)


# Found by these tests, and mended: a header compose cannot write within 78 columns, or a
# name with a line break, goes the long way through build.


def test_from_name_cannot_inject_headers(renderer: Renderer) -> None:
    assert_no_injection(renderer, from_name="CME team\r\nBcc: x@y")


LONG_LINES = {
    "subject-long-word": ({"context": processed(subject="https://example.org/" + "a" * 90)}),
    "from-name-long-ascii": {
        "from_name": "Children Missing Education team of Luton Borough Council and partners"
    },
    "from-name-non-ascii": {"from_name": "Équipe « CME » – Luton"},
    "to-several": {"to": [f"officer{i}@safeguarding.council.example.gov.uk" for i in range(3)]},
}


@pytest.mark.parametrize("kwargs", LONG_LINES.values(), ids=LONG_LINES.keys())
def test_long_headers_are_folded(renderer: Renderer, kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {
        "from_address": FROM_ADDRESS,
        "from_name": FROM_NAME,
        "to": [SCHOOL],
        "thread": Threading(INBOUND_ID),
    }
    kwargs = dict(kwargs)
    context = kwargs.pop("context", processed())
    args.update(kwargs)
    _, raw = renderer.compose("reply_processed", context, **args)
    built = renderer.build("reply_processed", context, **args)
    assert_same_message(parse(raw), built, same_id=False)
    head = raw.partition(b"\r\n\r\n")[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 78


def test_long_message_id_goes_through_build(renderer: Renderer) -> None:
    """Outlook's ids run past 78 columns: such a reply is built the long way (which folds)."""
    outlook = "<AM6PR03MB1234567ABCDEF0123456789ABCDEF@AM6PR03MB1234.eurprd03.prod.outlook.com>"
    _, raw = renderer.compose("reply_no_form", CASES["no-form"].context,
                              from_address=FROM_ADDRESS, from_name=FROM_NAME, to=[SCHOOL],
                              thread=Threading(outlook))  # fmt: skip
    msg = parse(raw)
    assert not (msg.get_boundary() or "").startswith("===============cme")
    assert str(msg["In-Reply-To"]).replace(" ", "") == outlook
    assert msg.defects == []
    assert max(len(line) for line in raw.partition(b"\r\n\r\n")[0].split(b"\r\n")) <= 78


def test_subject_line_within_rfc5322_limit(renderer: Renderer) -> None:
    context = processed(subject="https://example.org/" + "a" * 1100)
    _, raw = renderer.compose("reply_processed", context, from_address=FROM_ADDRESS,
                              from_name=FROM_NAME, to=[SCHOOL])  # fmt: skip
    built = renderer.build("reply_processed", context, from_address=FROM_ADDRESS,
                           from_name=FROM_NAME, to=[SCHOOL])  # fmt: skip
    assert str(parse(raw)["Subject"]) == str(built["Subject"])
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
