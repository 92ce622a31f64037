"""SmtpTransport against a real SMTP server (aiosmtpd, tests/servers.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from cme_mailbot.transport import PermanentFailure, TemporaryFailure
from cme_mailbot.transport.smtp import SmtpTransport

if TYPE_CHECKING:  # imported at run time by pytest_plugins, which rewrites its asserts
    from tests.servers import SmtpServer


SENDER = "cme-referrals@council.example"
RAW = (
    b"From: CME team <cme-referrals@council.example>\r\n"
    b"To: office@school.example\r\n"
    b"Subject: Re: Referral - processed\r\n"
    b"Auto-Submitted: auto-replied\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Thank you. Zo\xc3\xab's referral is CME-2026-00042.\r\n"
    b".A line that starts with a dot survives dot-stuffing.\r\n"
    b".\r\n"
    b"\r\n"
)


def transport(server: SmtpServer) -> SmtpTransport:
    return SmtpTransport(server.host, server.port, security="none", timeout=10)


def test_send_delivers_the_exact_bytes_to_each_recipient(smtp_server: SmtpServer) -> None:
    t = transport(smtp_server)

    refused = t.send(RAW, SENDER, ["office@school.example", "head@school.example"])

    assert refused == []
    [got] = smtp_server.messages
    assert got.data == RAW
    assert got.mail_from == SENDER
    assert got.rcpt_tos == ("office@school.example", "head@school.example")
    t.send(RAW, SENDER, ["office@school.example"])  # the connection is reused
    assert len(smtp_server.messages) == 2
    t.close()


def test_server_down_is_a_temporary_failure_and_sending_resumes_after(
    smtp_server: SmtpServer,
) -> None:
    t = transport(smtp_server)
    t.send(RAW, SENDER, ["office@school.example"])
    smtp_server.stop()

    with pytest.raises(TemporaryFailure):
        t.send(RAW, SENDER, ["office@school.example"])  # the open connection is gone
    with pytest.raises(TemporaryFailure):
        t.send(RAW, SENDER, ["office@school.example"])  # nothing listening

    smtp_server.start()
    assert t.send(RAW, SENDER, ["office@school.example"]) == []
    assert len(smtp_server.messages) == 2
    t.close()


@pytest.mark.parametrize("at", ["data", "rcpt"])
def test_a_4xx_reply_is_a_temporary_failure(smtp_server: SmtpServer, at: str) -> None:
    smtp_server.reply_with("451 4.3.0 Try again later", at=at)
    t = transport(smtp_server)

    with pytest.raises(TemporaryFailure):
        t.send(RAW, SENDER, ["office@school.example"])
    assert smtp_server.messages == []


@pytest.mark.parametrize("at", ["data", "rcpt"])
def test_a_5xx_reply_is_a_permanent_failure(smtp_server: SmtpServer, at: str) -> None:
    smtp_server.reply_with("550 5.1.1 No such user", at=at)
    t = transport(smtp_server)

    with pytest.raises(PermanentFailure):
        t.send(RAW, SENDER, ["office@school.example"])
    assert smtp_server.messages == []


def test_bare_lf_messages_go_out_with_crlf(smtp_server: SmtpServer) -> None:
    line = b"x" * 70
    raw = b"From: a@b.example\nTo: c@d.example\nSubject: s\n\n" + (line + b"\n") * 40
    SmtpTransport(smtp_server.host, smtp_server.port, "none").send(
        raw, "a@b.example", ["c@d.example"]
    )
    [got] = smtp_server.messages
    assert got.data.replace(b"\r\n", b"\n") == raw
