"""SMTP transport (smtplib): implicit TLS, STARTTLS or plain loopback, optional AUTH."""

from __future__ import annotations

import contextlib
import re
import smtplib
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path

from cme_mailbot.transport import PermanentFailure, TemporaryFailure


class SmtpTransport:
    def __init__(
        self,
        host: str,
        port: int,
        security: str = "starttls",
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        ca_file: Path | None = None,
        oauth2_token: Callable[[], str] | None = None,
    ):
        self.host = host
        self.port = port
        self.security = security
        self.username = username
        self.password = password
        self.timeout = timeout
        self.oauth2_token = oauth2_token
        self._ssl = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self._conn: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        conn: smtplib.SMTP
        if self.security == "ssl":
            conn = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=self._ssl)
        else:
            conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            if self.security == "starttls":
                conn.starttls(context=self._ssl)
            conn.ehlo()
            if self.oauth2_token is not None and self.username:
                self._xoauth2(conn, self.username, self.oauth2_token)
            elif self.username and self.password is not None:
                conn.login(self.username, self.password)
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _xoauth2(conn: smtplib.SMTP, username: str, get_token: Callable[[], str]) -> None:
        try:
            token = get_token()
        except Exception as exc:  # OAuth2Error says why (an AADSTS code), never the secret
            raise TemporaryFailure(f"no OAuth2 token for SMTP: {exc}") from None
        sasl = f"user={username}\x01auth=Bearer {token}\x01\x01"

        def respond(challenge: bytes | None = None) -> str:
            # First the initial response (smtplib base64-encodes it). A 334 after it carries a
            # base64 JSON error, to be answered with an empty line; the server then says 535.
            return sasl if challenge is None else ""

        conn.auth("XOAUTH2", respond, initial_response_ok=True)

    def send(self, raw: bytes, sender: str, recipients: Sequence[str]) -> list[str]:
        """Send; returns the recipients refused while others accepted (delivered, not retried)."""
        # smtplib passes bytes through as they are: the wire needs CRLF line endings.
        raw = re.sub(rb"(?<!\r)\n", b"\r\n", raw)
        try:
            if self._conn is None:
                self._conn = self._connect()
            refused = self._conn.sendmail(sender, list(recipients), raw)
        except smtplib.SMTPRecipientsRefused as exc:
            self._drop()
            codes = [code for code, _ in exc.recipients.values()]
            if all(400 <= c < 500 for c in codes):
                raise TemporaryFailure(f"recipients refused for now: {codes}") from None
            raise PermanentFailure(f"recipients refused: {codes}") from None
        except smtplib.SMTPAuthenticationError as exc:
            # Our credentials or the app's permissions, not the message: retry later.
            self._drop()
            raise TemporaryFailure(f"SMTP {exc.smtp_code}: authentication refused") from None
        except smtplib.SMTPResponseException as exc:
            self._drop()
            if 400 <= exc.smtp_code < 500:
                raise TemporaryFailure(f"SMTP {exc.smtp_code}") from None
            raise PermanentFailure(f"SMTP {exc.smtp_code}") from None
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            raise TemporaryFailure(f"{type(exc).__name__}: {exc}") from None
        return sorted(refused)

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                self._conn.quit()
            self._conn = None
