"""The Mailbox protocol the pipeline reads from; Maildir and IMAP implement it."""

from __future__ import annotations

from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class MailboxError(Exception):
    """A mailbox operation failed (connection, protocol); the poller reconnects and retries."""


class MailboxAuthError(MailboxError):
    """The server refused our credentials (or no token could be had): health checks fail."""


def imap_account(username: str, host: str, port: int) -> str:
    """The ledger name of an IMAP mailbox (no secrets)."""
    return f"imap://{username}@{host}:{port}"


def maildir_account(path: Path) -> str:
    """The ledger name of a Maildir."""
    return f"maildir:{Path(path).resolve()}"


@dataclass(frozen=True)
class MailboxMessage:
    """One message waiting in the watched folder.

    `location` identifies it within (account, folder): "UIDVALIDITY:UID" on IMAP, the file key on
    Maildir. `raw` is None when the message is larger than the configured cap and was not
    downloaded; the pipeline quarantines it by size alone.
    """

    location: str
    size: int
    raw: bytes | None


class Mailbox(Protocol):
    @property
    def account(self) -> str:
        """A stable name for the mailbox account, used as the ledger key (no secrets)."""
        ...

    @property
    def folder(self) -> str:
        """The watched folder, as configured (with "/" as the hierarchy separator)."""
        ...

    def pending(self, known: Container[str] = frozenset()) -> list[str]:
        """Locations in the watched folder not in `known`, oldest first; nothing is downloaded."""
        ...

    def fetch_new(self, known: Container[str] = frozenset()) -> Iterator[MailboxMessage]:
        """Yield messages in the watched folder, skipping locations in `known` without download."""
        ...

    def file(self, location: str, folder: str) -> bool:
        """Move the message to `folder` (created if missing). False if it is no longer there."""
        ...

    def file_many(self, locations: Sequence[str], folder: str) -> None:
        """Move several messages to `folder` at once; those no longer there are skipped. Raises
        `MailboxError` when it cannot say that every one has gone from the watched folder."""
        ...

    def append(self, raw: bytes, folder: str | None = None) -> None:
        """Deliver raw bytes into a folder (the watched one by default): demos and tests."""
        ...

    def wait_for_new(self, timeout: float) -> bool:
        """Block up to `timeout` seconds for new mail (IMAP IDLE); True if something arrived."""
        ...

    def close(self) -> None: ...
