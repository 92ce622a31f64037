"""Validation of a read form against the field schema and the CME rules in `rules/`.

The kinds of check are code (`checks.py`); which rules apply, in what order, with what wording and
source, is data (`rules/rules.toml`).
"""
