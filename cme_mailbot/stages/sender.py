"""Sender stage: is the From address genuine (Authentication-Results), and is it approved?

Only the topmost Authentication-Results header stamped by an authserv-id the council trusts (its
own border MTA) counts; anything further down could have been written by the sender. A From
address is genuine on `dmarc=pass`, or on `dkim=pass` whose `header.d` aligns with the From
domain (same organisational domain, from the bundled Public Suffix List: no network lookups).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from publicsuffixlist import PublicSuffixList

from cme_mailbot.config import SenderAuthSettings
from cme_mailbot.stages.parse import ParsedMessage


@dataclass(frozen=True)
class AuthVerdict:
    genuine: bool
    why: str


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


def organisational_domain(domain: str) -> str:
    domain = domain.strip().strip(".").lower()
    return str(_psl().privatesuffix(domain) or domain)


def aligned(dkim_domain: str, from_domain: str) -> bool:
    """DMARC relaxed alignment: the same organisational domain."""
    return organisational_domain(dkim_domain) == organisational_domain(from_domain)


_COMMENT = re.compile(r"\([^()]*\)")
_RESULT = re.compile(r"([a-z0-9_-]+)\s*=\s*([a-z]+)\b(.*)", re.S)
_PROP = re.compile(r"([a-z]+\.[a-z0-9_.-]+)\s*=\s*(\"[^\"]*\"|[^\s;]+)", re.I)


@dataclass(frozen=True)
class AuthResult:
    method: str
    result: str
    props: dict[str, str]


def parse_authentication_results(value: str) -> tuple[str, list[AuthResult]]:
    """RFC 8601: `authserv-id [version]; method=result prop=value ...; ...`."""
    text = _COMMENT.sub(" ", " ".join(value.split()))
    parts = [p.strip() for p in text.split(";")]
    authserv = parts[0].split()[0].lower() if parts and parts[0].split() else ""
    results: list[AuthResult] = []
    for part in parts[1:]:
        m = _RESULT.match(part.lower())
        if not m:
            continue
        props = {k.lower(): v.strip('"') for k, v in _PROP.findall(part)}
        results.append(AuthResult(m.group(1), m.group(2), props))
    return authserv, results


def _passes_for(r: AuthResult, method: str, from_domain: str) -> bool:
    """`method=pass`, for the From domain the MTA evaluated (header.from, when given): a pass
    for another domain than this message's From is no pass."""
    evaluated = r.props.get("header.from", from_domain).strip().strip(".").lower()
    return r.method == method and r.result == "pass" and evaluated == from_domain.lower()


def _verdict_from(results: list[AuthResult], from_domain: str) -> AuthVerdict:
    for r in results:
        if _passes_for(r, "dmarc", from_domain):
            return AuthVerdict(True, "dmarc=pass")
    for r in results:
        if r.method == "dkim" and r.result == "pass":
            d = r.props.get("header.d") or r.props.get("header.i", "").split("@")[-1]
            if d and aligned(d, from_domain):
                return AuthVerdict(True, "dkim=pass, aligned")
    return AuthVerdict(False, "no dmarc=pass or aligned dkim=pass")


def authenticate(msg: ParsedMessage, settings: SenderAuthSettings) -> AuthVerdict:
    sender = msg.sender
    if sender is None:
        return AuthVerdict(False, "not exactly one From address")
    if not settings.require:
        return AuthVerdict(True, "sender check switched off")
    from_domain = sender.rsplit("@", 1)[-1]
    headers = msg.header_values("Authentication-Results")
    if settings.mode == "microsoft365":
        if not headers:
            return AuthVerdict(False, "no Authentication-Results")
        _id, results = parse_authentication_results(headers[0])
        by = {r.method: r.result for r in results}
        dmarc = any(_passes_for(r, "dmarc", from_domain) for r in results)
        if by.get("compauth") == "pass" and dmarc:
            return AuthVerdict(True, "compauth=pass, dmarc=pass")
        return AuthVerdict(False, "Microsoft 365 did not pass compauth and dmarc")
    trusted = set(settings.trusted_authserv_ids)
    # Headers are prepended as mail travels: the first trusted one is the border MTA's own.
    for value in headers:
        authserv, results = parse_authentication_results(value)
        if authserv in trusted:
            return _verdict_from(results, from_domain)
    return AuthVerdict(False, "no Authentication-Results from a trusted authserv-id")
