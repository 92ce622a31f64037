"""Form readers that misbehave on purpose, for the sandbox tests: the worker process runs one
of these (`SandboxedReader(..., reader="tests.data.hostile_readers:spin")`) in place of
`forms.read_form`, as a file that subverts or overloads a parser would make it behave."""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

from cme_mailbot.forms import ExtractedForm


def spin(filename: str, content_type: str, data: bytes) -> ExtractedForm | None:
    while True:
        pass


def sleep(filename: str, content_type: str, data: bytes) -> ExtractedForm | None:
    time.sleep(3600)
    return None


def hog_memory(filename: str, content_type: str, data: bytes) -> ExtractedForm | None:
    hoard = [bytearray(64 << 20) for _ in range(1000)]
    return ExtractedForm(filename, "pdf", {"child_first_name": str(len(hoard))})


def segfault(filename: str, content_type: str, data: bytes) -> ExtractedForm | None:
    ctypes.string_at(0)
    return None


def environment(filename: str, content_type: str, data: bytes) -> ExtractedForm | None:
    """Reports what a subverted reader could see of the poller's environment."""
    return ExtractedForm(filename, "pdf", {"env": "\n".join(sorted(os.environ))})


def write_file(filename: str, content_type: str, data: bytes) -> ExtractedForm | None:
    """Tries to write the file named by the data (a subverted reader dropping a payload)."""
    try:
        Path(data.decode()).write_bytes(b"payload")
    except OSError as exc:
        return ExtractedForm(filename, "pdf", {"error": type(exc).__name__})
    return ExtractedForm(filename, "pdf", {"error": ""})


def bad_reply(filename: str, content_type: str, data: bytes) -> ExtractedForm | None:
    return ExtractedForm(filename, "pdf", {"child_first_name": 42})  # type: ignore[dict-item]


def echo_filename(filename: str, content_type: str, data: bytes) -> ExtractedForm | None:
    return ExtractedForm(filename, "docx", {"seen": filename})
