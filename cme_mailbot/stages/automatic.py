"""Automatic-mail stage: never answer a robot (RFC 3834), so the mailbox never joins a loop."""

from __future__ import annotations

from cme_mailbot.stages.parse import ParsedMessage

_ROBOT_LOCALPARTS = ("mailer-daemon", "postmaster", "noreply", "no-reply", "donotreply")
_SUPPRESS = {"all", "oof", "autoreply"}


def automatic_reason(msg: ParsedMessage, own_addresses: frozenset[str]) -> str | None:
    """Why this message is automatic mail that must get no reply, or None for a person's mail."""
    h = msg.headers
    auto = str(h.get("Auto-Submitted", "")).strip().lower()
    if auto and auto.split(";")[0].strip() != "no":
        return "Auto-Submitted"
    return_path = str(h.get("Return-Path", "")).strip()
    if return_path.replace(" ", "") == "<>":
        return "null Return-Path"
    sender = msg.sender or ""
    if sender in own_addresses:
        return "from our own address"
    if sender.split("@")[0] in _ROBOT_LOCALPARTS:
        return "robot sender"
    if str(h.get("Precedence", "")).strip().lower() in ("bulk", "list", "junk"):
        return "Precedence"
    if h.get("List-Id") is not None or h.get("List-Unsubscribe") is not None:
        return "mailing list"
    suppress = {p.strip().lower() for p in str(h.get("X-Auto-Response-Suppress", "")).split(",")}
    if suppress & _SUPPRESS:
        return "X-Auto-Response-Suppress"
    ctype = h.get_content_type()
    if ctype == "multipart/report":
        return "delivery or read report"
    if h.get("X-Autoreply") is not None or h.get("X-Autorespond") is not None:
        return "autoresponder header"
    subject = msg.subject.lower()
    if subject.startswith(("automatic reply:", "auto reply:", "autoreply:", "out of office")):
        return "out-of-office subject"
    return None
