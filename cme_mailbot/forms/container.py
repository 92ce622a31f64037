"""Checking a Word file's ZIP container before anything unpacks it.

A .docx is a ZIP archive, so an attachment can be a ZIP bomb (a few kilobytes that inflate to
gigabytes), an archive of thousands of entries, or a macro-enabled document renamed .docx.
These checks read only the archive's directory and the small [Content_Types].xml. CPython's
zipfile never inflates an entry beyond its declared size (it stops there and fails the CRC),
so limits on the declared sizes bound what python-docx will later inflate.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

from cme_mailbot.forms import FormUnreadable

ZIP_MAGIC = b"PK\x03\x04"
MAIN_PART = "word/document.xml"
_CONTENT_TYPES = "[Content_Types].xml"
_MACRO_MARKERS = (b"macroEnabled", b"vbaProject", b"vbaData")


@dataclass(frozen=True)
class ContainerLimits:
    max_entries: int = 1000
    max_total_size: int = 50 * 1024 * 1024  # declared, uncompressed
    max_ratio: int = 100  # uncompressed / compressed, per entry
    ratio_floor: int = 1024 * 1024  # entries smaller than this cannot be bombs, whatever ratio


DEFAULT_LIMITS = ContainerLimits()


def looks_like_docx(data: bytes) -> bool:
    """A cheap sniff without unpacking: a ZIP whose directory names the Word main part."""
    return data.startswith(ZIP_MAGIC) and MAIN_PART.encode() in data


def check_docx_container(data: bytes, limits: ContainerLimits = DEFAULT_LIMITS) -> None:
    """Raise `FormUnreadable` unless `data` is a modest, macro-free Word ZIP container."""
    if not data.startswith(ZIP_MAGIC):
        raise FormUnreadable("the Word file is not a ZIP container")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = archive.infolist()
            _check_entries(entries, limits)
            names = {e.filename for e in entries}
            if MAIN_PART not in names:
                raise FormUnreadable("the ZIP container has no Word document part")
            if _CONTENT_TYPES in names:
                content_types = archive.read(_CONTENT_TYPES)
                if any(marker in content_types for marker in _MACRO_MARKERS):
                    raise FormUnreadable("the Word file is macro-enabled")
    except FormUnreadable:
        raise
    except Exception as exc:  # BadZipFile, a bad CRC, an unsupported compression method, ...
        raise FormUnreadable(f"the ZIP container is damaged ({type(exc).__name__})") from None


def _check_entries(entries: list[zipfile.ZipInfo], limits: ContainerLimits) -> None:
    if len(entries) > limits.max_entries:
        raise FormUnreadable(
            f"the ZIP container has too many entries ({len(entries)} > {limits.max_entries})"
        )
    total = sum(e.file_size for e in entries)
    if total > limits.max_total_size:
        raise FormUnreadable(
            f"the ZIP container inflates to {total} bytes (limit {limits.max_total_size})"
        )
    for entry in entries:
        if entry.filename.lower().rsplit("/", 1)[-1] == "vbaproject.bin":
            raise FormUnreadable("the Word file contains macros (vbaProject.bin)")
        if entry.file_size > limits.ratio_floor and (
            entry.file_size > limits.max_ratio * max(entry.compress_size, 1)
        ):
            raise FormUnreadable("the ZIP container has an entry compressed like a ZIP bomb")
