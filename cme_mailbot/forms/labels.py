"""Matching printed labels to field ids, for forms that carry labels instead of field names.

A hand-typed Word table, or a PDF from another council whose fields are named after their
labels, is matched by the field's id, label or any alias in `rules/fields.toml`, compared with
`normalise_label` (case, punctuation, asterisks and trailing colons ignored).
"""

from __future__ import annotations

import re

from cme_mailbot.schema import FormSchema, normalise_label

# "Date of birth (DD/MM/YYYY)" is still "Date of birth"; "3. Postcode" is still "Postcode".
_PARENTHETICAL = re.compile(r"\([^()]*\)|\[[^\[\]]*\]")
_NUMBERING = re.compile(r"^\s*(?:\(?\d{1,2}[a-z]?[.)]|\(?[a-z][.)])\s+", re.IGNORECASE)


class LabelIndex:
    """Normalised label, alias or id -> field id for one schema."""

    def __init__(self, schema: FormSchema) -> None:
        self._ids: dict[str, str] = {}
        # Ids and labels are added before aliases so that, were an alias ever to repeat
        # another field's label, the label wins.
        for spec in schema.fields:
            self._add(spec.id, spec.id)
            self._add(spec.label, spec.id)
        for spec in schema.fields:
            for alias in spec.aliases:
                self._add(alias, spec.id)

    def _add(self, text: str, field_id: str) -> None:
        key = normalise_label(text)
        if key:
            self._ids.setdefault(key, field_id)

    def match(self, text: str) -> str | None:
        """The field id that `text` labels, or None."""
        if not text or len(text) > 200:  # a label is short; a paragraph of prose is not one
            return None
        candidates = (
            text,
            _NUMBERING.sub("", text),
            _PARENTHETICAL.sub(" ", text),
            _PARENTHETICAL.sub(" ", _NUMBERING.sub("", text)),
        )
        for candidate in candidates:
            key = normalise_label(candidate)
            if key in self._ids:
                return self._ids[key]
        return None
