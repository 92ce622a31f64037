"""A Transport that writes each outgoing message as an .eml file: the embedded default."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path


class OutboxTransport:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def send(self, raw: bytes, sender: str, recipients: Sequence[str]) -> list[str]:
        # Named by content so a retried send after a crash rewrites the same file, not a second.
        digest = hashlib.sha256(raw).hexdigest()[:16]
        final = self.path / f"{digest}.eml"
        tmp = self.path / f".{digest}.tmp"
        tmp.write_bytes(raw)
        os.replace(tmp, final)
        return []

    def close(self) -> None:
        return None
