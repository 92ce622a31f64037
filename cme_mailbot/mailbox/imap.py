"""An IMAP mailbox (Microsoft 365, Dovecot, any RFC 3501 server) through IMAPClient.

Messages are identified as "UIDVALIDITY:UID", found with UID SEARCH ALL (flags are never trusted
to mean "handled": the ledger is), downloaded with BODY.PEEK[] so \\Seen is left alone, and filed
with UID MOVE, or UID COPY + \\Deleted + UID EXPUNGE of that one UID. A bare EXPUNGE is never
sent: it would also remove messages another client marked \\Deleted. Any connection or protocol
failure is a `MailboxError` whose text holds no message content; the next call reconnects.
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
import time
from collections.abc import Callable, Container, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import structlog
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError, ProtocolError

from cme_mailbot.config import MailboxSettings
from cme_mailbot.mailbox import MailboxAuthError, MailboxError, MailboxMessage, imap_account
from cme_mailbot.oauth import OAuth2Error

log = structlog.get_logger("cme_mailbot.mailbox.imap")

# Servers drop an IDLE after 30 minutes of silence (RFC 2177); re-issue it well before that.
MAX_IDLE_SECONDS = 25 * 60

# IMAPClient logs every protocol line, message bodies included, at DEBUG on these loggers.
# Referrals carry children's personal data, which must never reach a log file.
for _name in ("imapclient", "imapclient.imaplib"):
    logging.getLogger(_name).setLevel(logging.WARNING)

_DELETED = b"\\Deleted"
_NEW_MAIL = (b"EXISTS", b"RECENT")


def parse_location(location: str) -> tuple[int, int] | None:
    """Split an IMAP location, "UIDVALIDITY:UID", into two ints; None if it is not one."""
    validity, sep, uid = location.partition(":")
    if not sep or not validity.isdigit() or not uid.isdigit():
        return None
    return int(validity), int(uid)


class ImapMailbox:
    """The watched folder on an IMAP server, reached over TLS (or plain on loopback only)."""

    def __init__(
        self,
        settings: MailboxSettings,
        password: str | None,
        token_provider: Callable[[], str] | None = None,
    ):
        self._settings = settings
        self._password = password
        self._token_provider = token_provider
        self._ssl_context: ssl.SSLContext | None = None
        if settings.security != "none":
            # create_default_context verifies the chain and the host name (TLS 1.2 or later).
            cafile = str(settings.ca_file) if settings.ca_file else None
            self._ssl_context = ssl.create_default_context(cafile=cafile)
        self._client: Any = None  # IMAPClient is untyped
        self._capabilities: frozenset[str] = frozenset()
        self._delimiter: str | None = "/"
        self._prefix = ""
        self._uidvalidity = 0
        self._highest: tuple[int, int] | None = None  # (UIDVALIDITY, UID) last fetch_new saw
        self._existing: set[str] = set()  # server folder names known to exist this session

    # --- Mailbox protocol -----------------------------------------------------------------------

    @property
    def account(self) -> str:
        s = self._settings
        return imap_account(s.username, s.host, s.port)

    @property
    def folder(self) -> str:
        return self._settings.folder

    def pending(self, known: Container[str] = frozenset()) -> list[str]:
        with self._guard("search"):
            client = self._session(reselect=True)
            validity = self._uidvalidity
            uids = sorted(int(u) for u in client.search(["ALL"]))
        return [loc for loc in (f"{validity}:{u}" for u in uids) if loc not in known]

    def fetch_new(self, known: Container[str] = frozenset()) -> Iterator[MailboxMessage]:
        """Every message in the watched folder not in `known`, oldest UID first.

        Sizes come first (RFC822.SIZE); a message over `max_message_bytes` is yielded with
        raw=None and never downloaded. Bodies are fetched in batches of `batch_size` messages
        and at most `max_message_bytes` bytes, so memory stays bounded whatever the backlog.
        """
        with self._guard("search"):
            client = self._session(reselect=True)
            validity = self._uidvalidity
            uids = sorted(int(u) for u in client.search(["ALL"]))
        self._highest = (validity, uids[-1] if uids else 0)
        todo = [u for u in uids if f"{validity}:{u}" not in known]
        cap = self._settings.max_message_bytes
        for batch in _chunks(todo, self._settings.batch_size):
            with self._guard("fetch sizes"):
                client = self._session()
                if self._uidvalidity != validity:
                    return  # reconnected to a renumbered folder: these locations mean nothing
                sizes = {
                    int(uid): int(data[b"RFC822.SIZE"])
                    for uid, data in client.fetch(batch, ["RFC822.SIZE"]).items()
                    if b"RFC822.SIZE" in data
                }
            present = [u for u in batch if u in sizes]  # absent: expunged since the SEARCH
            group_of: dict[int, list[int]] = {}
            for group in _by_bytes([u for u in present if sizes[u] <= cap], sizes, budget=cap):
                group_of.update((u, group) for u in group)
            current: list[int] | None = None
            bodies: dict[int, bytes] = {}
            for uid in present:
                location = f"{validity}:{uid}"
                if sizes[uid] > cap:
                    yield MailboxMessage(location, sizes[uid], None)
                    continue
                if group_of[uid] is not current:
                    current = group_of[uid]
                    bodies = self._download(current, validity)
                raw = bodies.pop(uid, None)
                if raw is not None:
                    yield MailboxMessage(location, len(raw), raw)

    def _download(self, uids: list[int], validity: int) -> dict[int, bytes]:
        with self._guard("fetch"):
            client = self._session()
            if self._uidvalidity != validity:
                return {}
            return {
                int(uid): bytes(data[b"BODY[]"])
                for uid, data in client.fetch(uids, ["BODY.PEEK[]"]).items()
                if data.get(b"BODY[]") is not None
            }

    def file(self, location: str, folder: str) -> bool:
        """Move one message to `folder` (created if missing); False if it is no longer there.

        Uses UID MOVE when offered; otherwise UID COPY, \\Deleted and UID EXPUNGE of that UID
        alone (UIDPLUS). A server with neither MOVE nor UIDPLUS gets the copy and the \\Deleted
        flag but no expunge, since a bare EXPUNGE could destroy other clients' messages: the
        original stays behind flagged \\Deleted (logged), and the ledger keeps it from being
        handled again.
        """
        parsed = parse_location(location)
        if parsed is None:
            return False
        validity, uid = parsed
        with self._guard("file"):
            client = self._session()
            if validity != self._uidvalidity:
                return False
            target = self._ensure_folder(folder)
            if not self._still_there(uid):
                return False
            # From here a concurrent expunge shows up as NO [EXPUNGEISSUED] (handled below);
            # two instances filing the same message at once is excluded by the ledger's lease.
            try:
                if "MOVE" in self._capabilities:
                    client.move([uid], target)
                else:
                    client.copy([uid], target)
            except IMAPClientAbortError:
                raise
            except IMAPClientError:
                # NO [EXPUNGEISSUED]: expunged by another client since our last sync.
                if not self._still_there(uid):
                    return False
                raise
            if "MOVE" in self._capabilities:
                return True
            client.add_flags([uid], [_DELETED], silent=True)
            if "UIDPLUS" in self._capabilities:
                client.uid_expunge([uid])
            else:
                log.warning(
                    "imap_no_uidplus_left_deleted",
                    account=self.account,
                    location=location,
                    folder=folder,
                    detail="server lacks MOVE and UIDPLUS; original left flagged \\Deleted",
                )
            return True

    def file_many(self, locations: Sequence[str], folder: str) -> None:
        """Move several messages to `folder` with one UID MOVE (or COPY + \\Deleted + UID
        EXPUNGE of those UIDs); those no longer there are skipped. Raises `MailboxError`."""
        if len(locations) == 1:
            self.file(locations[0], folder)
            return
        parsed = [p for p in map(parse_location, locations) if p is not None]
        fallback = False
        with self._guard("file"):
            client = self._session()
            uids = sorted(uid for validity, uid in parsed if validity == self._uidvalidity)
            if not uids:
                return  # another UIDVALIDITY: those locations name nothing here now
            target = self._ensure_folder(folder)
            client.noop()  # see _still_there
            present = sorted(int(u) for u in client.search(["UID", _uid_set(uids)]))
            if not present:
                return
            try:
                if "MOVE" in self._capabilities:
                    client.move(present, target)
                    return
                client.copy(present, target)
            except IMAPClientAbortError:
                raise
            except IMAPClientError:
                fallback = True  # NO [EXPUNGEISSUED]: one at a time tells which are gone
            if not fallback:
                client.add_flags(present, [_DELETED], silent=True)
                if "UIDPLUS" in self._capabilities:
                    client.uid_expunge(present)
                else:
                    log.warning(
                        "imap_no_uidplus_left_deleted",
                        account=self.account,
                        count=len(present),
                        folder=folder,
                        detail="server lacks MOVE and UIDPLUS; originals left flagged \\Deleted",
                    )
        if fallback:
            for location in locations:
                self.file(location, folder)

    def append(self, raw: bytes, folder: str | None = None) -> None:
        with self._guard("append"):
            client = self._session()
            name = self._ensure_folder(folder) if folder else self._server_name(self.folder)
            client.append(name, raw)

    def wait_for_new(self, timeout: float) -> bool:
        """IMAP IDLE on the watched folder for up to `timeout` seconds; True if mail arrived."""
        if timeout <= 0:
            return False
        if not self._settings.idle:
            time.sleep(timeout)
            return False
        with self._guard("idle"):
            client = self._session()
            if self._highest is not None and self._highest[0] == self._uidvalidity:
                highest = self._highest[1]
                # Mail that arrived since the last fetch_new may already have been announced
                # (in a response to an earlier command) and would not be announced again
                # during IDLE: sync (NOOP), then look for UIDs above the last seen. ("n:*"
                # always matches the highest UID, hence the comparison.)
                client.noop()
                newer = client.search(["UID", f"{highest + 1}:*"])
                if any(int(u) > highest for u in newer):
                    return True
            if "IDLE" not in self._capabilities:
                idle = False
            else:
                idle = True
                client.idle()
                responses = list(client.idle_check(timeout=min(timeout, MAX_IDLE_SECONDS)))
                _text, more = client.idle_done()
                responses.extend(more)
        if not idle:
            time.sleep(timeout)
            return False
        return any(len(r) > 1 and r[1] in _NEW_MAIL for r in responses)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.logout()
        except Exception:  # a broken connection: nothing left to say goodbye to
            _shutdown(client)

    # --- helpers --------------------------------------------------------------------------------

    def noop(self) -> None:
        """Check the connection (and keep it alive); MailboxError if it is broken."""
        with self._guard("noop"):
            self._session().noop()

    def reconnect(self) -> None:
        """Drop the connection and open a fresh one now."""
        self._drop()
        with self._guard("connect"):
            self._session()

    def server_folder_name(self, folder: str) -> str:
        """The server's name for a configured "/"-separated folder path (connects if needed)."""
        with self._guard("connect"):
            self._session()
            return self._server_name(folder)

    @property
    def uidvalidity(self) -> int:
        """The watched folder's UIDVALIDITY in the current session (connects if needed)."""
        with self._guard("connect"):
            self._session()
            return self._uidvalidity

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        try:
            yield
        except MailboxError:
            raise
        except (IMAPClientError, OSError) as exc:
            self._drop()
            error = MailboxAuthError if isinstance(exc, LoginError) else MailboxError
            raise error(f"IMAP {action} failed on {self.account}: {self._describe(exc)}") from (
                exc if isinstance(exc, OSError) else None
            )

    def _describe(self, exc: BaseException) -> str:
        """A one-line reason that cannot carry message content or secrets."""
        if isinstance(exc, OSError):
            text = f"{type(exc).__name__}: {exc}"
        elif isinstance(exc, (IMAPClientAbortError, ProtocolError)):
            # Aborts can quote an unparsed server line, which may be part of a message.
            text = "connection lost or protocol error"
        else:
            # A tagged NO/BAD: the server's own words about our command.
            kind = "login refused" if isinstance(exc, LoginError) else "server said"
            said = re.sub(r"""\bb(['"])(.*?)\1""", r"\2", str(exc))  # b'...' from bytes
            text = f"{kind}: {said}"
        if self._password:  # servers do not echo it, but a log line is no place to find out
            text = text.replace(self._password, "***")
        text = " ".join(text.split())
        return text if len(text) <= 200 else text[:197] + "..."

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            _shutdown(client)

    def _session(self, *, reselect: bool = False) -> Any:
        """The logged-in client with the watched folder selected, connecting if needed."""
        if self._client is None:
            self._client = self._connect()
            self._existing = set()
            self._discover_hierarchy()
            reselect = True
        if reselect:
            self._select_watched()
        return self._client

    def _connect(self) -> Any:
        s = self._settings
        client = IMAPClient(
            s.host,
            port=s.port,
            ssl=s.security == "ssl",
            ssl_context=self._ssl_context,
            timeout=s.timeout_seconds,  # connect, and every read and write
        )
        # IMAPClient turns imaplib's own debugging up to its highest level (5), to route it to
        # the "imapclient.imaplib" logger. imaplib then formats every response, message bodies
        # included, whether or not that logger is enabled: a copy of each body as text, and, for
        # a fetch, the text of the whole response again (a 34 MB message cost 112 MB of memory
        # and 2 % of the drain). Children's details must never reach a log either. Off.
        client._imap.debug = 0
        try:
            if s.security == "starttls":
                client.starttls(ssl_context=self._ssl_context)  # no STARTTLS offered -> error
            if s.auth == "oauth2":
                client.oauth2_login(s.username, self._token())
            else:
                if self._password is None:
                    raise MailboxError(f"IMAP login on {self.account}: no password configured")
                client.login(s.username, self._password)
            self._capabilities = frozenset(
                (c.decode("ascii", "replace") if isinstance(c, bytes) else str(c)).upper()
                for c in client.capabilities()
            )
        except BaseException:
            _shutdown(client)
            raise
        return client

    def _token(self) -> str:
        if self._token_provider is None:
            raise MailboxError(
                f"IMAP login on {self.account}: auth = oauth2 needs a token provider"
            )
        try:
            return self._token_provider()
        except Exception as exc:
            # OAuth2Error's text is safe to show (an AADSTS code, never the secret).
            reason = str(exc) if isinstance(exc, OAuth2Error) else type(exc).__name__
            raise MailboxAuthError(
                f"IMAP login on {self.account}: could not obtain an OAuth2 token ({reason})"
            ) from None

    def _discover_hierarchy(self) -> None:
        """Learn the personal namespace's prefix and delimiter (NAMESPACE, else LIST "" "")."""
        client = self._client
        self._prefix, self._delimiter = "", None
        if "NAMESPACE" in self._capabilities:
            personal = client.namespace().personal
            if personal:
                prefix, delimiter = personal[0]
                self._prefix = str(prefix or "")
                self._delimiter = str(delimiter) if delimiter else None
                return
        for _flags, delimiter, _name in client.list_folders("", ""):
            if delimiter:
                self._delimiter = (
                    delimiter.decode() if isinstance(delimiter, bytes) else str(delimiter)
                )

    def _server_name(self, folder: str) -> str:
        parts = [p for p in folder.split("/") if p]
        if not parts:
            raise MailboxError(f"IMAP folder {folder!r} is empty")
        if len(parts) == 1 and parts[0].upper() == "INBOX":
            return "INBOX"
        delimiter = self._delimiter
        if delimiter is None:
            if len(parts) > 1:
                raise MailboxError(f"IMAP server has no folder hierarchy for {folder!r}")
            delimiter = "/"
        if any(delimiter in p for p in parts):
            raise MailboxError(
                f"IMAP folder {folder!r}: a name contains the server's delimiter {delimiter!r}"
            )
        name = delimiter.join(parts)
        prefix = self._prefix
        if prefix and not name.upper().startswith(prefix.upper()):
            name = prefix + name
        return name

    def _ensure_folder(self, folder: str) -> str:
        """The server name of `folder`, creating it and any missing parents first."""
        name = self._server_name(folder)
        if name in self._existing or name == "INBOX":
            return name
        client = self._client
        delimiter = self._delimiter or "/"
        levels = name[len(self._prefix) :].split(delimiter)
        for depth in range(1, len(levels) + 1):
            path = self._prefix + delimiter.join(levels[:depth])
            if path in self._existing or path.upper() == "INBOX" or client.folder_exists(path):
                self._existing.add(path)
                continue
            try:
                client.create_folder(path)
            except IMAPClientError:
                # Another instance may have created it a moment ago.
                if not client.folder_exists(path):
                    raise
            with contextlib.suppress(IMAPClientError):
                client.subscribe_folder(path)  # so mail clients (Outlook) show it
            log.info("imap_folder_created", account=self.account, folder=path)
            self._existing.add(path)
        return name

    def _select_watched(self) -> None:
        client = self._client
        name = self._server_name(self.folder)
        if name != "INBOX" and name not in self._existing:
            self._ensure_folder(self.folder)
        info = client.select_folder(name)
        validity = info.get(b"UIDVALIDITY")
        if validity is None:
            raise MailboxError(f"IMAP server gave no UIDVALIDITY for {self.folder!r}")
        self._uidvalidity = int(validity)

    def _still_there(self, uid: int) -> bool:
        """Whether `uid` is in the watched folder now (NOOP first: another session may have
        expunged it, and Dovecot shows a session such changes only when it syncs)."""
        client = self._client
        client.noop()
        return bool(client.search(["UID", str(uid)]))


def _shutdown(client: Any) -> None:
    with contextlib.suppress(Exception):  # already broken; the socket is gone either way
        client.shutdown()


def _uid_set(uids: Sequence[int]) -> str:
    """An IMAP sequence set for sorted UIDs, with runs as ranges: "3:7,9"."""
    parts: list[str] = []
    start = prev = uids[0]
    for uid in uids[1:]:
        if uid != prev + 1:
            parts.append(f"{start}:{prev}" if start != prev else str(start))
            start = uid
        prev = uid
    parts.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(parts)


def _chunks(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _by_bytes(uids: Sequence[int], sizes: dict[int, int], budget: int) -> Iterator[list[int]]:
    """Consecutive groups of `uids` whose sizes add up to at most `budget` (at least one each)."""
    group: list[int] = []
    total = 0
    for uid in uids:
        if group and total + sizes[uid] > budget:
            yield group
            group, total = [], 0
        group.append(uid)
        total += sizes[uid]
    if group:
        yield group
