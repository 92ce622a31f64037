"""Extract stage: find the referral forms among a message's attachments."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cme_mailbot.forms import ExtractedForm, FormUnreadable
from cme_mailbot.stages.parse import Attachment

FormReader = Callable[[str, str, bytes], ExtractedForm | None]


@dataclass
class Extraction:
    forms: list[ExtractedForm] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # why, per attachment (no child data)


def extract_forms(attachments: list[Attachment], reader: FormReader) -> Extraction:
    out = Extraction()
    for att in attachments:
        try:
            form = reader(att.filename, att.content_type, att.data)
        except FormUnreadable as exc:
            out.unreadable.append(str(exc) or "unreadable attachment")
            continue
        if form is not None:
            out.forms.append(form)
    return out
