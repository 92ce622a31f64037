"""The Transport protocol replies are sent through; SMTP and the .eml outbox implement it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class TemporaryFailure(Exception):
    """Try again later (connection refused, 4xx)."""


class PermanentFailure(Exception):
    """Will never succeed as it is (5xx for every recipient); recorded and shown to operators."""


class Transport(Protocol):
    def send(self, raw: bytes, sender: str, recipients: Sequence[str]) -> list[str]:
        """Hand one message to the next hop or raise TemporaryFailure / PermanentFailure.

        Returns the recipients refused while the others were accepted (the message went out).
        """
        ...

    def close(self) -> None: ...
