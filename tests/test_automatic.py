"""Automatic mail gets no reply, ever (RFC 3834)."""

from __future__ import annotations

import pytest

from cme_mailbot.stages.automatic import automatic_reason
from cme_mailbot.stages.parse import parse_message

OWN = frozenset({"cme-referrals@council.example.gov.uk"})


def msg(headers: dict[str, str], from_: str = "office@school.example.uk",
        ctype: str = "text/plain") -> bytes:  # fmt: skip
    lines = [f"From: {from_}", "Subject: hello", f"Content-Type: {ctype}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\nbody").encode()


@pytest.mark.parametrize(
    ("headers", "from_", "ctype"),
    [
        ({"Auto-Submitted": "auto-replied"}, None, None),
        ({"Auto-Submitted": "auto-generated"}, None, None),
        ({"Return-Path": "<>"}, None, None),
        ({}, "MAILER-DAEMON@mx.school.example.uk", None),
        ({}, "postmaster@school.example.uk", None),
        ({"Precedence": "bulk"}, None, None),
        ({"Precedence": "list"}, None, None),
        ({"Precedence": "junk"}, None, None),
        ({"List-Id": "<staff.school.example.uk>"}, None, None),
        ({"List-Unsubscribe": "<mailto:x@y>"}, None, None),
        ({"X-Auto-Response-Suppress": "OOF, AutoReply"}, None, None),
        ({"X-Auto-Response-Suppress": "All"}, None, None),
        ({}, "cme-referrals@council.example.gov.uk", None),
        ({}, None, "multipart/report; report-type=delivery-status; boundary=x"),
    ],
)
def test_robots_are_recognised(headers: dict[str, str], from_: str | None,
                               ctype: str | None) -> None:  # fmt: skip
    raw = msg(headers, from_ or "office@school.example.uk", ctype or "text/plain")
    assert automatic_reason(parse_message(raw), OWN) is not None


@pytest.mark.parametrize(
    "headers",
    [{}, {"Auto-Submitted": "no"}, {"Precedence": "normal"}, {"X-Auto-Response-Suppress": "DR"}],
)
def test_people_are_not_robots(headers: dict[str, str]) -> None:
    assert automatic_reason(parse_message(msg(headers)), OWN) is None
