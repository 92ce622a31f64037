"""Emails from templates found by name: `<name>.subject.j2`, `<name>.txt.j2`, `<name>.html.j2`.

Code never glues message text together; it hands a template a context and gets back a complete,
threaded, RFC 3834-marked message.
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"


@dataclass(frozen=True)
class Threading:
    """The message being answered: In-Reply-To and References follow from it."""

    message_id: str | None
    references: Sequence[str] = ()


class Renderer:
    def __init__(self, templates_dir: Path | None = None):
        directory = templates_dir or TEMPLATES_DIR
        self._text = Environment(
            loader=FileSystemLoader(str(directory)),
            undefined=StrictUndefined,
            autoescape=False,  # noqa: S701 - plain-text parts are not HTML
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self._html = Environment(
            loader=FileSystemLoader(str(directory)),
            undefined=StrictUndefined,
            autoescape=select_autoescape(default=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def render(self, name: str, context: Mapping[str, Any]) -> tuple[str, str, str]:
        subject = self._text.get_template(f"{name}.subject.j2").render(context)
        text = self._text.get_template(f"{name}.txt.j2").render(context)
        html = self._html.get_template(f"{name}.html.j2").render(context)
        return " ".join(subject.split()), text, html

    def build(
        self,
        name: str,
        context: Mapping[str, Any],
        *,
        from_address: str,
        from_name: str,
        to: Sequence[str],
        thread: Threading | None = None,
        message_id: str | None = None,
    ) -> EmailMessage:
        subject, text, html = self.render(name, context)
        msg = EmailMessage()
        msg["From"] = email.utils.formataddr((from_name, from_address))
        msg["To"] = ", ".join(to)
        msg["Subject"] = subject
        msg["Date"] = email.utils.formatdate(localtime=False)
        domain = from_address.rsplit("@", 1)[-1]
        msg["Message-ID"] = message_id or email.utils.make_msgid(domain=domain)
        if thread is not None and thread.message_id:
            msg["In-Reply-To"] = thread.message_id
            msg["References"] = " ".join([*thread.references, thread.message_id])
        # RFC 3834: mark as automatic so other robots do not answer us; ask Exchange likewise.
        msg["Auto-Submitted"] = "auto-replied" if thread is not None else "auto-generated"
        msg["X-Auto-Response-Suppress"] = "All"
        msg.set_content(text)
        msg.add_alternative(html, subtype="html")
        return msg
