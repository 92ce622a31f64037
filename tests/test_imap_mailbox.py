"""ImapMailbox against a real Dovecot started for each test (tests/servers.py)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from imapclient import IMAPClient

from cme_mailbot.mailbox import MailboxError
from cme_mailbot.mailbox.imap import ImapMailbox, _uid_set

if TYPE_CHECKING:  # imported at run time by pytest_plugins, which rewrites its asserts
    from tests.servers import DovecotServer

    Factory = Callable[..., DovecotServer]

pytestmark = pytest.mark.dovecot


def message(n: int, body_size: int = 0) -> bytes:
    """A CRLF message with 8-bit text and a base64 part; `body_size` pads it."""
    padding = ("x" * 76 + "\r\n") * (body_size // 78)
    return (
        f"From: School Office <office@school.example>\r\n"
        f"To: cme@council.example\r\n"
        f"Subject: Referral {n}\r\n"
        f"Message-ID: <ref-{n}@school.example>\r\n"
        f"MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="b{n}"\r\n'
        f"\r\n"
        f"--b{n}\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: 8bit\r\n"
        f"\r\n"
        f"Zoë Ó Súilleabháin, pupil {n}\r\n"
        f".a line starting with a dot\r\n"
        f"{padding}"
        f"--b{n}\r\n"
        f"Content-Type: application/pdf; name=form.pdf\r\n"
        f"Content-Transfer-Encoding: base64\r\n"
        f"\r\n"
        f"JVBERi0xLjcKJcfsj6IK\r\n"
        f"--b{n}--\r\n"
    ).encode()


def mailbox(server: DovecotServer, password: str = "secret", **overrides: Any) -> ImapMailbox:
    return ImapMailbox(server.settings(**overrides), password)


@pytest.fixture
def body_fetches(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The UIDs of every BODY.PEEK[] fetch made through IMAPClient during the test."""
    calls: list[list[int]] = []
    original = IMAPClient.fetch

    def spy(self: IMAPClient, messages: Any, data: Any, modifiers: Any = None) -> Any:
        items = [data] if isinstance(data, str | bytes) else list(data)
        if any("BODY" in (i.decode() if isinstance(i, bytes) else i).upper() for i in items):
            calls.append(sorted(int(m) for m in messages))
        return original(self, messages, data, modifiers)

    monkeypatch.setattr(IMAPClient, "fetch", spy)
    return calls


@pytest.fixture
def other(dovecot: DovecotServer) -> Iterator[IMAPClient]:
    """A second, independent connection to the same mailbox."""
    client = dovecot.client()
    yield client
    client.logout()


def uids(client: IMAPClient, folder: str = "INBOX") -> list[int]:
    client.select_folder(folder)  # (re)select: Dovecot shows a session new mail only on sync
    return sorted(client.search(["ALL"]))


def uid_of(location: str) -> int:
    return int(location.split(":")[1])


def mark_deleted(client: IMAPClient, uid: int, *, expunge: bool = False) -> None:
    """What another mail client does: flag \\Deleted (and maybe expunge) one message."""
    client.select_folder("INBOX")
    client.add_flags([uid], [b"\\Deleted"])
    if expunge:
        client.uid_expunge([uid])


# --- fetching -----------------------------------------------------------------------------------


def test_fetch_returns_the_appended_bytes_unchanged_with_uidvalidity_in_location(
    dovecot: DovecotServer, other: IMAPClient
) -> None:
    mb = mailbox(dovecot)
    raw = message(1)
    mb.append(raw)

    [got] = list(mb.fetch_new())

    validity = other.select_folder("INBOX")[b"UIDVALIDITY"]
    assert got.raw == raw
    assert got.size == len(raw)
    assert got.location == f"{validity}:{uids(other)[0]}"
    mb.close()


def test_no_message_content_is_formatted_for_imaplib_debugging_even_when_logged(
    dovecot: DovecotServer, caplog: pytest.LogCaptureFixture
) -> None:
    # IMAPClient turns imaplib's debugging to its highest level, routed to a logger: imaplib
    # would format every body into text (memory, time) and a DEBUG handler would record it.
    mb = mailbox(dovecot)
    raw = message(7)
    mb.append(raw)
    with (
        caplog.at_level(logging.DEBUG, logger="imapclient"),
        caplog.at_level(logging.DEBUG, logger="imapclient.imaplib"),  # WARNING otherwise
    ):
        [got] = list(mb.fetch_new())
    assert got.raw == raw
    assert mb._client._imap.debug == 0
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "pupil 7" not in logged and "Referral 7" not in logged
    mb.close()


def test_fetch_leaves_messages_unread_and_does_not_rely_on_flags(
    dovecot: DovecotServer, other: IMAPClient
) -> None:
    mb = mailbox(dovecot)
    mb.append(message(1))
    mb.append(message(2))
    [first, _second] = uids(other)
    other.add_flags([first], [b"\\Seen"])  # someone read it in Outlook: still ours to handle

    got = list(mb.fetch_new())

    assert [m.raw for m in got] == [message(1), message(2)]
    flags = other.get_flags(uids(other))
    assert b"\\Seen" not in flags[_second]
    mb.close()


def test_known_locations_are_skipped_before_download(
    dovecot: DovecotServer, body_fetches: list[list[int]]
) -> None:
    mb = mailbox(dovecot)
    for n in range(3):
        mb.append(message(n))
    all_three = list(mb.fetch_new())
    body_fetches.clear()

    known = frozenset(m.location for m in all_three[:2])
    again = list(mb.fetch_new(known))

    assert [m.location for m in again] == [all_three[2].location]
    assert again[0].raw == message(2)
    downloaded = {uid for call in body_fetches for uid in call}
    assert downloaded == {uid_of(all_three[2].location)}
    mb.close()


def test_message_over_the_size_cap_is_yielded_without_being_downloaded(
    dovecot: DovecotServer, body_fetches: list[list[int]]
) -> None:
    small, big = message(1), message(2, body_size=4000)
    mb = mailbox(dovecot, max_message_bytes=2000)
    mb.append(small)
    mb.append(big)
    mb.append(small)

    got = list(mb.fetch_new())

    assert [m.raw for m in got] == [small, None, small]
    assert got[1].size == len(big)
    big_uid = uid_of(got[1].location)
    assert all(big_uid not in call for call in body_fetches)
    mb.close()


def test_messages_come_oldest_first_in_bounded_batches(
    dovecot: DovecotServer, body_fetches: list[list[int]]
) -> None:
    mb = mailbox(dovecot, batch_size=2)
    for n in range(5):
        mb.append(message(n))

    got = list(mb.fetch_new())

    assert [m.raw for m in got] == [message(n) for n in range(5)]
    locations = [uid_of(m.location) for m in got]
    assert locations == sorted(locations)
    assert body_fetches and all(len(call) <= 2 for call in body_fetches)
    mb.close()


def test_watched_folder_other_than_inbox_is_created_and_read(dovecot: DovecotServer) -> None:
    mb = mailbox(dovecot, folder="Referrals/Incoming")
    mb.append(message(1))

    assert [m.raw for m in mb.fetch_new()] == [message(1)]
    assert mb.server_folder_name("Referrals/Incoming") == "Referrals.Incoming"
    mb.close()


# --- filing -------------------------------------------------------------------------------------


def test_file_moves_into_a_nested_folder_created_with_the_dot_delimiter(
    dovecot: DovecotServer, other: IMAPClient
) -> None:
    assert b"MOVE" in other.capabilities()
    mb = mailbox(dovecot)
    mb.append(message(1))
    [got] = list(mb.fetch_new())

    assert mb.file(got.location, "CME/Processed") is True

    names = {name: delim for _flags, delim, name in other.list_folders()}
    assert names.get("CME.Processed") == b"."
    assert uids(other) == []
    [moved] = uids(other, "CME.Processed")
    assert other.fetch([moved], ["BODY.PEEK[]"])[moved][b"BODY[]"] == message(1)
    assert (dovecot.maildir() / ".CME.Processed").is_dir()
    mb.close()


def test_file_creates_nested_folders_on_a_slash_delimiter_server(dovecot_factory: Factory) -> None:
    server = dovecot_factory(separator="/")
    mb = mailbox(server)
    mb.append(message(1))
    [got] = list(mb.fetch_new())

    assert mb.file(got.location, "CME/Quarantine") is True

    other = server.client()
    names = {name: delim for _flags, delim, name in other.list_folders()}
    assert names.get("CME/Quarantine") == b"/"
    assert len(uids(other, "CME/Quarantine")) == 1
    assert (server.maildir() / "CME" / "Quarantine").is_dir()  # LAYOUT=fs
    other.logout()
    mb.close()


@pytest.mark.parametrize("hide_move", [False, True], ids=["move", "copy-expunge"])
def test_filing_removes_only_that_message_not_others_flagged_deleted(
    dovecot_factory: Factory, hide_move: bool
) -> None:
    server = dovecot_factory(hide_move=hide_move)
    other = server.client()
    assert (b"MOVE" in other.capabilities()) is not hide_move
    assert b"UIDPLUS" in other.capabilities()
    mb = mailbox(server)
    mb.append(message(1))
    mb.append(message(2))
    first, second = list(mb.fetch_new())
    # Another client marks message 2 deleted but has not expunged it: it must survive.
    mark_deleted(other, uid_of(second.location))

    assert mb.file(first.location, "CME/Processed") is True

    left = uids(other)
    assert left == [uid_of(second.location)]
    assert b"\\Deleted" in other.get_flags(left)[left[0]]
    assert len(uids(other, "CME.Processed")) == 1
    other.logout()
    mb.close()


def test_without_move_or_uidplus_the_original_is_copied_and_left_flagged_deleted(
    dovecot_factory: Factory,
) -> None:
    server = dovecot_factory(hide_capabilities=["MOVE", "UIDPLUS"])
    other = server.client()
    assert not {b"MOVE", b"UIDPLUS"} & set(other.capabilities())
    mb = mailbox(server)
    mb.append(message(1))
    mb.append(message(2))
    first, second = list(mb.fetch_new())

    assert mb.file(first.location, "CME/Rejected") is True

    # No bare EXPUNGE: both originals are still there, the filed one flagged \Deleted.
    left = uids(other)
    assert len(left) == 2
    flags = other.get_flags(left)
    assert b"\\Deleted" in flags[left[0]]
    assert b"\\Deleted" not in flags[left[1]]
    assert len(uids(other, "CME.Rejected")) == 1
    # The ledger passes the filed location as known, so it is not handed out again.
    assert [m.location for m in mb.fetch_new(frozenset({first.location}))] == [second.location]
    other.logout()
    mb.close()


def test_file_of_a_message_that_is_gone_returns_false(
    dovecot: DovecotServer, other: IMAPClient
) -> None:
    mb = mailbox(dovecot)
    mb.append(message(1))
    mb.append(message(2))
    first, second = list(mb.fetch_new())

    assert mb.file(first.location, "CME/Processed") is True
    assert mb.file(first.location, "CME/Processed") is False  # already filed

    # Expunged by another client behind our back.
    uid = uid_of(second.location)
    mark_deleted(other, uid, expunge=True)
    assert mb.file(second.location, "CME/Processed") is False

    validity, _, _ = first.location.partition(":")
    assert mb.file(f"{int(validity) + 1}:{uid}", "CME/Processed") is False  # other UIDVALIDITY
    assert mb.file("not-an-imap-location", "CME/Processed") is False
    assert len(uids(other, "CME.Processed")) == 1
    mb.close()


@pytest.mark.parametrize(
    "hide", [[], ["MOVE"], ["MOVE", "UIDPLUS"]], ids=["move", "copy-uidplus", "copy-only"]
)
def test_file_many_moves_those_there_skips_the_gone_and_spares_the_rest(
    dovecot_factory: Factory, hide: list[str]
) -> None:
    server = dovecot_factory(hide_capabilities=hide) if hide else dovecot_factory()
    other = server.client()
    mb = mailbox(server)
    for n in range(1, 7):
        mb.append(message(n))
    got = list(mb.fetch_new())
    # Another client expunged message 3 behind our back and flagged message 6 \Deleted.
    mark_deleted(other, uid_of(got[2].location))
    other.expunge()
    mark_deleted(other, uid_of(got[5].location))
    validity = got[0].location.split(":")[0]
    stale = f"{int(validity) + 1}:{uid_of(got[4].location)}"

    mb.file_many([got[i].location for i in (0, 1, 2, 3)] + [stale], "CME/Processed")

    assert len(uids(other, "CME.Processed")) == 3
    left = uids(other)
    if "UIDPLUS" in hide:  # no expunge at all: the filed ones stay behind flagged \Deleted
        assert len(left) == 5
    else:
        assert left == [uid_of(got[4].location), uid_of(got[5].location)]
        assert b"\\Deleted" in other.get_flags(left)[left[1]]  # the other client's flag kept
    other.logout()
    mb.close()


def test_uid_sets_collapse_runs() -> None:
    assert _uid_set([1]) == "1"
    assert _uid_set([1, 2, 3, 5, 7, 8]) == "1:3,5,7:8"


# --- waiting ------------------------------------------------------------------------------------


def test_idle_wakes_when_another_connection_appends(
    dovecot: DovecotServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    mb = mailbox(dovecot)
    assert list(mb.fetch_new()) == []
    idling = threading.Event()
    original_idle = IMAPClient.idle

    def idle(self: IMAPClient) -> Any:
        result = original_idle(self)
        idling.set()
        return result

    monkeypatch.setattr(IMAPClient, "idle", idle)
    outcome: list[bool] = []
    waiter = threading.Thread(target=lambda: outcome.append(mb.wait_for_new(timeout=30)))
    waiter.start()
    assert idling.wait(timeout=10)

    other = dovecot.client()
    other.append("INBOX", message(1))
    waiter.join(timeout=10)

    assert not waiter.is_alive(), "IDLE did not wake within 10 s of the append"
    assert outcome == [True]
    assert [m.raw for m in mb.fetch_new()] == [message(1)]
    other.logout()
    mb.close()


def test_wait_for_new_times_out_false_and_sees_mail_that_came_before_it(
    dovecot: DovecotServer, other: IMAPClient
) -> None:
    mb = mailbox(dovecot)
    assert list(mb.fetch_new()) == []
    assert mb.wait_for_new(timeout=0.3) is False

    other.append("INBOX", message(1))  # arrives between a poll and the next wait
    assert mb.wait_for_new(timeout=30) is True
    mb.close()


# --- failures -----------------------------------------------------------------------------------


def test_after_a_server_restart_one_call_fails_and_the_next_reconnects(
    dovecot: DovecotServer,
) -> None:
    mb = mailbox(dovecot)
    mb.append(message(1))
    [before] = list(mb.fetch_new())

    dovecot.restart()

    with pytest.raises(MailboxError):
        list(mb.fetch_new())
    [after] = list(mb.fetch_new())
    assert after == before
    assert mb.file(after.location, "CME/Processed") is True
    mb.close()


def test_server_down_is_a_mailbox_error_and_close_does_not_raise(dovecot: DovecotServer) -> None:
    mb = mailbox(dovecot)
    mb.noop()
    dovecot.stop()

    with pytest.raises(MailboxError):
        mb.noop()
    with pytest.raises(MailboxError, match="ConnectionRefused"):
        mb.noop()
    mb.close()

    dovecot.start()
    mb.noop()
    mb.close()
    mb.close()


def test_wrong_password_is_a_mailbox_error_that_does_not_show_the_password(
    dovecot: DovecotServer,
) -> None:
    mb = mailbox(dovecot, password="hunter2-Wrong")

    with pytest.raises(MailboxError) as caught:
        list(mb.fetch_new())

    text = str(caught.value)
    assert "login refused" in text
    assert "hunter2-Wrong" not in text
    assert "hunter2-Wrong" not in repr(caught.value.__cause__)
    assert "cme@127.0.0.1" in text


def test_oauth2_token_goes_to_the_server_and_never_into_the_error(dovecot: DovecotServer) -> None:
    calls: list[int] = []

    def token() -> str:
        calls.append(1)
        return "tok-SECRET-123"

    mb = ImapMailbox(dovecot.settings(auth="oauth2"), None, token_provider=token)

    with pytest.raises(MailboxError) as caught:  # this Dovecot offers no XOAUTH2
        mb.noop()
    assert calls == [1]
    assert "tok-SECRET-123" not in str(caught.value)


def test_account_names_user_host_and_port_only(dovecot: DovecotServer) -> None:
    mb = mailbox(dovecot)
    assert mb.account == f"imap://cme@127.0.0.1:{dovecot.port}"
    assert mb.folder == "INBOX"


# --- TLS ----------------------------------------------------------------------------------------


@pytest.fixture
def tls_dovecot(dovecot_factory: Factory) -> DovecotServer:
    return dovecot_factory(ssl=True)


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_tls_with_the_configured_ca_verifies_and_works(
    tls_dovecot: DovecotServer, security: str
) -> None:
    port = tls_dovecot.ssl_port if security == "ssl" else tls_dovecot.port
    mb = mailbox(tls_dovecot, security=security, port=port, ca_file=tls_dovecot.ca_file)
    mb.append(message(1))
    assert [m.raw for m in mb.fetch_new()] == [message(1)]
    assert mb._client.socket().version().startswith("TLS")
    mb.close()


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_tls_without_the_ca_fails_verification(tls_dovecot: DovecotServer, security: str) -> None:
    port = tls_dovecot.ssl_port if security == "ssl" else tls_dovecot.port
    mb = mailbox(tls_dovecot, security=security, port=port)

    with pytest.raises(MailboxError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        mb.noop()


def test_starttls_is_required_when_configured(dovecot: DovecotServer) -> None:
    """A server that offers no STARTTLS is an error, never a silent plain-text login."""
    mb = mailbox(dovecot, security="starttls")
    with pytest.raises(MailboxError, match="STARTTLS"):
        mb.noop()


def test_hide_move_hides_only_move_from_capability(dovecot_factory: Factory) -> None:
    plain = dovecot_factory().client()
    hidden = dovecot_factory(hide_move=True).client()
    assert set(plain.capabilities()) - set(hidden.capabilities()) == {b"MOVE"}
    plain.logout()
    hidden.logout()


def test_idle_off_in_settings_just_sleeps(dovecot: DovecotServer) -> None:
    mb = mailbox(dovecot, idle=False)
    started = time.monotonic()
    assert mb.wait_for_new(timeout=0.2) is False
    assert time.monotonic() - started >= 0.2
