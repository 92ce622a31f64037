"""Tidying raw values read from a form, shared by the PDF and Word readers.

Values stay raw text (validation parses them); this module only removes what is clearly
presentation: line-ending variants, surrounding space, and tick-box glyphs in a cell such as
"Yes ☒ No ☐", which is an answer ("yes") rather than text.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

from cme_mailbot.schema import FieldSpec, normalise_label

TICKED = "☒☑"
UNTICKED = "☐"
_GLYPHS = re.compile(f"([{TICKED}{UNTICKED}])")
_PARENTHETICAL = re.compile(r"\([^()]*\)")


def clean_text(text: str) -> str:
    """Viewers store line breaks as \\r or \\r\\n; surrounding space is never meaningful."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u00a0", " ")
    return text.strip()


def _option_word(text: str) -> str:
    """ "Yes (leave unticked for no) /" -> "Yes"."""
    return _PARENTHETICAL.sub(" ", text).strip(" \t\n:;,/|-–")


def read_tick_boxes(text: str, spec: FieldSpec) -> str:
    """Turn a row of tick boxes typed into a cell into the answer it gives.

    "Yes ☒ No ☐" and "☒ Yes ☐ No" -> "yes"; "Yes ☐ No ☐" -> "" (unanswered); a single
    "☐ Yes" -> "no"; "Female ☐ Male ☒" -> "Male". Text without glyphs, a lone glyph, two ticked
    options or an unparseable mixture is returned unchanged for validation to judge.
    """
    if spec.type not in ("yes_no", "choice") or not _GLYPHS.search(text):
        return text
    pieces = _GLYPHS.split(text)  # [text, glyph, text, glyph, ..., text]
    glyphs = pieces[1::2]
    texts = pieces[0::2]
    if not _option_word(texts[0]):
        options = [_option_word(t) for t in texts[1:]]  # glyph before its option
    elif not _option_word(texts[-1]):
        options = [_option_word(t) for t in texts[:-1]]  # option before its glyph
    else:
        return text
    if not all(options):
        return text
    ticked = [opt for opt, glyph in zip(options, glyphs, strict=True) if glyph in TICKED]
    if spec.type == "yes_no" and len(options) == 1 and normalise_label(options[0]) == "yes":
        return "yes" if ticked else "no"
    if not ticked:
        return ""
    if len(ticked) > 1:
        return text
    answer = ticked[0]
    if spec.type == "yes_no" and normalise_label(answer) in ("yes", "no"):
        return normalise_label(answer)
    return answer


def drop_untouched_boxes(fields: Mapping[str, str], unticked: Collection[str]) -> dict[str, str]:
    """A form whose only answers are unticked check boxes has not been filled in.

    An unticked box means "no" on a filled-in form, but on a blank form it means nothing, so a
    blank form reads as empty (and is then not a form at all) instead of as four "no" answers.
    """
    if set(fields) <= set(unticked):
        return {}
    return dict(fields)
