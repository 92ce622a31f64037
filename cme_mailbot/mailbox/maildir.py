"""A Maildir mailbox: the embedded default, and the backend most tests use.

Outcome folders are Maildir++ sub-folders (`.CME.Processed`), the layout Dovecot uses, so a
Maildir written here can be served by an IMAP server as it is.
"""

from __future__ import annotations

import mailbox
import re
import time
from collections.abc import Container, Iterator, Sequence
from pathlib import Path

from cme_mailbot.mailbox import MailboxError, MailboxMessage, maildir_account

_UNIQUE = re.compile(r"M(\d+)P(\d+)Q(\d+)")


def _delivery_order(key: str) -> tuple[int, int, int, str]:
    """Sort key for Maildir names "<seconds>.M<microseconds>P<pid>Q<count>.<host>" (Python's
    mailbox module; the microseconds are not zero-padded, so names do not sort as text)."""
    seconds, _, rest = key.partition(".")
    unique = _UNIQUE.match(rest)
    if not seconds.isdigit():
        return (0, 0, 0, key)
    if unique is None:
        return (int(seconds), 0, 0, key)
    return (int(seconds), int(unique.group(1)), int(unique.group(3)), key)


def _subfolder_name(folder: str) -> str:
    return ".".join(p for p in folder.split("/") if p)


class MaildirMailbox:
    def __init__(self, path: Path, folder: str = "INBOX", max_message_bytes: int = 30 << 20):
        self._root = mailbox.Maildir(str(path), create=True)
        self._path = Path(path).resolve()
        self._folder = folder
        self._max = max_message_bytes
        self._watched = self._open(folder)

    def _open(self, folder: str) -> mailbox.Maildir:
        if folder.upper() == "INBOX":
            return self._root
        name = _subfolder_name(folder)
        if name in self._root.list_folders():
            return self._root.get_folder(name)
        return self._root.add_folder(name)

    @property
    def account(self) -> str:
        return maildir_account(self._path)

    @property
    def folder(self) -> str:
        return self._folder

    def pending(self, known: Container[str] = frozenset()) -> list[str]:
        return [
            key for key in sorted(self._watched.keys(), key=_delivery_order) if key not in known
        ]

    def fetch_new(self, known: Container[str] = frozenset()) -> Iterator[MailboxMessage]:
        self._watched.clean()
        # Oldest first, by delivery time; keys are unique per file.
        keys = sorted(self._watched.keys(), key=_delivery_order)
        for key in keys:
            if key in known:
                continue
            try:
                path = Path(self._watched._path) / self._watched._lookup(key)  # type: ignore[attr-defined]
                size = path.stat().st_size
            except (KeyError, FileNotFoundError):
                continue  # filed by another instance meanwhile
            if size > self._max:
                yield MailboxMessage(location=key, size=size, raw=None)
                continue
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                continue
            yield MailboxMessage(location=key, size=size, raw=raw)

    def file_many(self, locations: Sequence[str], folder: str) -> None:
        try:
            for location in locations:
                self.file(location, folder)
        except OSError as exc:
            raise MailboxError(f"maildir: cannot file into {folder}: {exc.strerror}") from None

    def file(self, location: str, folder: str) -> bool:
        target = self._open(folder)
        try:
            src = Path(self._watched._path) / self._watched._lookup(location)  # type: ignore[attr-defined]
        except KeyError:
            return False
        # A rename into the target's cur/ keeps the bytes and is atomic on one filesystem.
        dest = Path(target._path) / "cur" / (location + ":2,S")
        try:
            src.rename(dest)
        except FileNotFoundError:
            return False
        return True

    def append(self, raw: bytes, folder: str | None = None) -> None:
        target = self._open(folder) if folder else self._watched
        target.add(raw)

    def wait_for_new(self, timeout: float) -> bool:
        """Watch the folder's new/ directory: a delivery changes it."""
        new_dir = Path(self._watched._path) / "new"
        deadline = time.monotonic() + timeout
        before = new_dir.stat().st_mtime_ns
        while time.monotonic() < deadline:
            if new_dir.stat().st_mtime_ns != before:
                return True
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))
        return False

    def close(self) -> None:
        return None

    def list_folder(self, folder: str) -> list[bytes]:
        """The raw messages in a folder (tests, demo)."""
        box = self._open(folder)
        return [box.get_bytes(k) for k in sorted(box.keys())]
