"""Sender trust: only the topmost trusted Authentication-Results counts."""

from __future__ import annotations

import pytest

from cme_mailbot.config import SenderAuthSettings
from cme_mailbot.stages.parse import parse_message
from cme_mailbot.stages.sender import aligned, authenticate, parse_authentication_results

TRUSTED = SenderAuthSettings(require=True, trusted_authserv_ids=("mx.council.example.gov.uk",))


def message(*auth_headers: str, from_: str = "Office <office@school.sch.example.uk>") -> bytes:
    lines = [f"Authentication-Results: {h}" for h in auth_headers]
    lines += [f"From: {from_}", "To: cme@council.example.gov.uk", "Subject: x",
              "Message-ID: <a@b>", "", "body"]  # fmt: skip
    return "\r\n".join(lines).encode()


def verdict(raw: bytes, settings: SenderAuthSettings = TRUSTED) -> bool:
    return authenticate(parse_message(raw), settings).genuine


@pytest.mark.parametrize(
    ("headers", "genuine"),
    [
        (["mx.council.example.gov.uk; dmarc=pass header.from=school.sch.example.uk"], True),
        (["mx.council.example.gov.uk; dmarc=fail header.from=school.sch.example.uk"], False),
        (["mx.council.example.gov.uk; dkim=pass header.d=school.sch.example.uk"], True),
        (["mx.council.example.gov.uk; dkim=pass header.d=mail.school.sch.example.uk"], True),
        (["mx.council.example.gov.uk; dkim=pass header.d=bulkmailer.example.net"], False),
        (["mx.council.example.gov.uk; spf=pass smtp.mailfrom=school.sch.example.uk"], False),
        # Only the trusted authserv-id counts, whatever others say.
        (["mx.attacker.example.net; dmarc=pass"], False),
        # The topmost trusted header wins over an older (possibly forged) one below it.
        ([
            "mx.council.example.gov.uk; dmarc=fail",
            "mx.council.example.gov.uk; dmarc=pass",
        ], False),
        ([
            "mx.attacker.example.net; dmarc=pass",
            "mx.council.example.gov.uk; dmarc=none",
        ], False),
        (["mx.council.example.gov.uk 1; dmarc=pass (p=reject) header.from=school.sch.example.uk"],
         True),
        (["MX.Council.Example.Gov.UK; DMARC=PASS"], True),
        (["mx.council.example.gov.uk; dmarc=pass header.from=School.SCH.example.uk"], True),
        # A pass for another From domain than this message's (found by fuzzing: a From whose
        # domain differs from the one the MTA evaluated) is no pass.
        (["mx.council.example.gov.uk; dmarc=pass header.from=other.sch.example.uk"], False),
        (["mx.council.example.gov.uk; dmarc=pass header.from=sch.example.uk"], False),
        ([], False),
    ],
)  # fmt: skip
def test_authentication_results(headers: list[str], genuine: bool) -> None:
    assert verdict(message(*headers)) is genuine


def test_display_name_never_counts() -> None:
    raw = message(
        "mx.council.example.gov.uk; dmarc=pass",
        from_='"office@school.sch.example.uk" <someone@evil.example.net>',
    )
    parsed = parse_message(raw)
    assert parsed.sender == "someone@evil.example.net"


def test_two_from_addresses_are_not_genuine() -> None:
    raw = message(
        "mx.council.example.gov.uk; dmarc=pass",
        from_="a@school.sch.example.uk, b@school.sch.example.uk",
    )
    assert verdict(raw) is False


def test_microsoft365_mode_needs_compauth_and_dmarc() -> None:
    m365 = SenderAuthSettings(require=True, mode="microsoft365")
    good = (
        "spf=pass smtp.mailfrom=school.sch.example.uk; dkim=pass header.d=school.sch.example.uk;"
        " dmarc=pass action=none header.from=school.sch.example.uk; compauth=pass reason=100"
    )
    assert verdict(message(good), m365)
    assert not verdict(message(good.replace("compauth=pass", "compauth=fail")), m365)
    assert not verdict(message(), m365)
    # A dmarc pass evaluated for another From domain than this message's is no pass.
    other = good.replace("header.from=school.sch.example.uk", "header.from=evil.example.net")
    assert not verdict(message(other), m365)


def test_check_can_be_switched_off() -> None:
    assert verdict(message(), SenderAuthSettings(require=False))


def test_parse_ignores_comments_and_reads_properties() -> None:
    authserv, results = parse_authentication_results(
        "mx.example.org (Postfix); dkim=pass (2048-bit key) header.d=a.example header.s=s1;"
        " dmarc=pass (p=none) header.from=a.example"
    )
    assert authserv == "mx.example.org"
    assert [(r.method, r.result) for r in results] == [("dkim", "pass"), ("dmarc", "pass")]
    assert results[0].props["header.d"] == "a.example"


def test_alignment_uses_the_public_suffix_list() -> None:
    assert aligned("mail.luton.gov.uk", "luton.gov.uk")
    assert not aligned("luton.gov.uk", "bedford.gov.uk")
    assert not aligned("example.co.uk", "other.co.uk")


def test_header_facts_of_an_unparseable_message_follow_the_same_rules() -> None:
    from cme_mailbot.stages.parse import parse_headers

    raw = (
        b"From: a@school.sch.example.uk, b@school.sch.example.uk\r\n"
        b"Subject: =?utf-8?q?CME_referral?=\x00 form\r\n"
        b"Message-ID: <q@school.sch.example.uk>\r\n\r\nbody"
    )
    facts = parse_headers(raw)
    assert facts.sender is None  # two From addresses: no single sender to acknowledge
    assert facts.subject == "CME referral form"
    assert facts.message_id == "<q@school.sch.example.uk>"
