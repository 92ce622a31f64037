"""config.example.toml documents every key, and parses."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from cme_mailbot.config import EMBEDDED, MailboxEntry, MailboxSettings, Settings, load_settings

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def test_example_config_parses() -> None:
    settings = load_settings(EXAMPLE)
    assert settings.mailbox.backend == "imap"
    assert settings.sender_auth.require is True


def test_example_config_documents_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    # Keys shown commented out (e.g. `# path = ...`) count as documented.
    documented: dict[str, set[str]] = {}
    section = ""
    for line in text.splitlines():
        if m := re.match(r"^#?\s*\[\[?(\w+)\]\]?", line):
            section = m.group(1)
            documented[section] = set()
        elif m := re.match(r"^#?\s*(\w+)\s*=", line):
            documented.setdefault(section, set()).add(m.group(1))
    for name, field in Settings.model_fields.items():
        model: Any = MailboxEntry if name == "mailboxes" else field.annotation
        assert model is not None
        keys = set(model.model_fields)
        if name == "mailboxes":  # the [mailbox] keys apply and are documented there
            keys -= set(MailboxSettings.model_fields)
        assert keys <= documented.get(name, set()), (name, keys - documented.get(name, set()))
    tomllib.loads(text)


def test_embedded_defaults_are_offline_and_need_no_file() -> None:
    assert EMBEDDED.mailbox.backend == "maildir"
    assert EMBEDDED.outbound.backend == "outbox"
    assert load_settings(None) is EMBEDDED
