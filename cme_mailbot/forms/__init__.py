"""Referral-form readers: one per format, all yielding field id -> raw text.

The interface the pipeline relies on:

* `read_form(filename, content_type, data)` returns an `ExtractedForm` for an attachment that is a
  referral form, `None` for an attachment that is not one (a logo, a letter), and raises
  `FormUnreadable` for a file that looks like a form but cannot be read safely (corrupt,
  encrypted, a ZIP bomb): the pipeline quarantines the message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


class FormUnreadable(Exception):
    """The attachment could not be read safely. The message text never contains child data."""


@dataclass
class ExtractedForm:
    filename: str
    format: Literal["pdf", "docx"]
    # Raw text by field id, as the school typed it; check boxes read as "yes"/"no".
    # Fields that are absent or blank on the form are left out.
    fields: dict[str, str] = field(default_factory=dict)
