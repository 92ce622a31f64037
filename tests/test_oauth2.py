"""OAuth2 (Microsoft 365): the token provider, and XOAUTH2 against real servers.

IMAP logs in to a real Dovecot through its oauth2 passdb, which asks a local token-introspection
endpoint about each bearer token; SMTP sends through aiosmtpd taking AUTH XOAUTH2 (both in
tests/servers.py). Tokens come from an injected source: MSAL is replaced by a tripwire, so no
test can reach login.microsoftonline.com.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import msal  # type: ignore[import-untyped]
import pytest

from cme_mailbot.config import ConfigError, parse_settings
from cme_mailbot.mailbox import MailboxError
from cme_mailbot.mailbox.imap import ImapMailbox
from cme_mailbot.oauth import (
    DEFAULT_SCOPE,
    MsalClientCredentials,
    OAuth2Error,
    OAuth2Settings,
    TokenProvider,
)
from cme_mailbot.transport import TemporaryFailure
from cme_mailbot.transport.smtp import SmtpTransport
from cme_mailbot.wiring import open_mailbox, open_transport

if TYPE_CHECKING:  # imported at run time by pytest_plugins, which rewrites its asserts
    from tests.servers import DovecotServer, SmtpServer

pytest_plugins = ["tests.servers"]

SENDER = "cme-referrals@council.example"
SECRET = "s3cr3t~Value.of-the~client_secret"
TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT_ID = "66666666-7777-8888-9999-000000000000"
ENV = {
    "CME_OAUTH2_TENANT_ID": TENANT,
    "CME_OAUTH2_CLIENT_ID": CLIENT_ID,
    "CME_OAUTH2_CLIENT_SECRET": SECRET,
}
RAW = (
    b"From: CME team <cme-referrals@council.example>\r\n"
    b"To: office@school.example\r\n"
    b"Subject: Re: Referral - processed\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Thank you. The referral is CME-2026-00042.\r\n"
)


def referral(n: int) -> bytes:
    return (
        f"From: School Office <office@school.example>\r\n"
        f"To: cme@council.example\r\n"
        f"Subject: Referral {n}\r\n"
        f"Message-ID: <ref-{n}@school.example>\r\n"
        f"\r\n"
        f"Pupil {n}\r\n"
    ).encode()


# --- fakes --------------------------------------------------------------------------------------


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Source:
    """An injected token source, standing in for MSAL: issues tok-1, tok-2, ... and tells the
    server about each (as Entra ID's tokens are valid at Exchange Online)."""

    grant: Callable[[str], None] = lambda token: None
    lifetime: float = 3600.0
    issued: list[str] = field(default_factory=list)
    delay: float = 0.0

    def __call__(self) -> tuple[str, float]:
        if self.delay:
            time.sleep(self.delay)
        token = f"tok-{len(self.issued) + 1}"
        self.issued.append(token)
        self.grant(token)
        return token, self.lifetime

    @property
    def calls(self) -> int:
        return len(self.issued)


class Counting:
    """Wraps a token provider to count how often the mailbox or transport asked for a token."""

    def __init__(self, provider: Callable[[], str]) -> None:
        self.provider = provider
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return self.provider()


@pytest.fixture(autouse=True)
def no_msal(monkeypatch: pytest.MonkeyPatch) -> None:
    """MSAL is a tripwire here: building its application fails the test."""

    def tripwire(*args: Any, **kwargs: Any) -> Any:
        pytest.fail("MSAL was contacted; tests must inject a token source")

    monkeypatch.setattr(msal, "ConfidentialClientApplication", tripwire)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    return dict(ENV)


# --- TokenProvider ------------------------------------------------------------------------------


def test_provider_caches_the_token_until_the_refresh_margin() -> None:
    clock, source = Clock(), Source(lifetime=3600)
    provider = TokenProvider(source, refresh_margin=300, clock=clock)

    assert provider() == "tok-1"
    clock.advance(3600 - 300 - 1)  # 301 s left: still good
    assert provider() == "tok-1"
    assert source.calls == 1
    assert provider.expires_in == pytest.approx(301)

    clock.advance(2)  # 299 s left: inside the margin, fetch a new one before it expires
    assert provider() == "tok-2"
    assert source.calls == 2
    assert provider.expires_in == pytest.approx(3600)


def test_provider_invalidate_fetches_afresh() -> None:
    source = Source()
    provider = TokenProvider(source, clock=Clock())
    provider()
    provider.invalidate()
    assert provider.expires_in is None
    assert provider() == "tok-2"


def test_provider_is_thread_safe_one_fetch_for_many_callers() -> None:
    source = Source(delay=0.05)
    provider = TokenProvider(source)
    got: list[str] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        got.append(provider())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)

    assert got == ["tok-1"] * 8
    assert source.calls == 1


@pytest.mark.parametrize(
    "answer", [("", 3600.0), ("tok", 0.0), ("tok", -5.0), ("tok", "soon"), ("tok",)]
)
def test_provider_rejects_a_bad_answer_from_its_source(answer: Any) -> None:
    provider = TokenProvider(lambda: answer)
    with pytest.raises(OAuth2Error):
        provider()


# --- MSAL behind the provider (with a stand-in application) ------------------------------------


class FakeApp:
    """Records how it was built and asked; answers like ConfidentialClientApplication."""

    built: ClassVar[list[tuple[tuple[Any, ...], dict[str, Any]]]] = []
    asked: ClassVar[list[list[str]]] = []
    answers: ClassVar[list[Any]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        FakeApp.built.append((args, kwargs))

    def acquire_token_for_client(self, scopes: list[str]) -> Any:
        FakeApp.asked.append(list(scopes))
        answer = FakeApp.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def fake_msal(monkeypatch: pytest.MonkeyPatch) -> type[FakeApp]:
    FakeApp.built, FakeApp.asked, FakeApp.answers = [], [], []
    monkeypatch.setattr(msal, "ConfidentialClientApplication", FakeApp)
    return FakeApp


def test_from_settings_uses_msal_client_credentials_lazily(
    env: dict[str, str], fake_msal: type[FakeApp]
) -> None:
    clock = Clock()
    fake_msal.answers = [
        {"access_token": "at-1", "token_type": "Bearer", "expires_in": 3599},
        {"access_token": "at-2", "token_type": "Bearer", "expires_in": 3599},
    ]
    provider = TokenProvider.from_settings(OAuth2Settings(), clock=clock)
    assert fake_msal.built == []  # nothing built, nothing fetched at start-up

    assert provider() == "at-1"
    assert provider() == "at-1"
    clock.advance(3400)
    assert provider() == "at-2"

    [(args, kwargs)] = fake_msal.built  # one application, reused (it keeps MSAL's cache)
    assert args == (CLIENT_ID,)
    assert kwargs["client_credential"] == SECRET
    assert kwargs["authority"] == f"https://login.microsoftonline.com/{TENANT}"
    assert fake_msal.asked == [[DEFAULT_SCOPE], [DEFAULT_SCOPE]]
    assert SECRET not in repr(provider)


def test_an_entra_id_refusal_names_the_error_and_code_but_never_the_secret(
    env: dict[str, str], fake_msal: type[FakeApp]
) -> None:
    fake_msal.answers = [
        {
            "error": "invalid_client",
            # Entra ID does not echo the secret; this one does, to prove it would be blanked.
            "error_description": (
                f"AADSTS7000215: Invalid client secret provided ({SECRET}).\r\n"
                "Trace ID: abc\r\nCorrelation ID: def\r\nTimestamp: 2026-01-01 00:00:00Z"
            ),
            "error_codes": [7000215],
            "correlation_id": "def",
        }
    ]
    provider = TokenProvider.from_settings(OAuth2Settings())

    with pytest.raises(OAuth2Error) as caught:
        provider()

    text = str(caught.value)
    assert "invalid_client" in text
    assert "AADSTS7000215" in text
    assert "correlation id def" in text
    assert SECRET not in text
    assert "\n" not in text


def test_msal_exceptions_become_oauth2_errors_and_the_next_call_retries(
    env: dict[str, str], fake_msal: type[FakeApp]
) -> None:
    fake_msal.answers = [
        ConnectionError("login.microsoftonline.com: Name or service not known"),
        {"access_token": "at-1", "expires_in": 3599},
    ]
    provider = TokenProvider.from_settings(OAuth2Settings())

    with pytest.raises(OAuth2Error, match="ConnectionError"):
        provider()
    assert provider() == "at-1"


def test_msal_setup_failure_is_an_oauth2_error() -> None:
    def broken_factory(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("Unable to get authority configuration for https://login.../nope")

    source = MsalClientCredentials(
        tenant_id="nope", client_id=CLIENT_ID, client_secret=SECRET, app_factory=broken_factory
    )
    with pytest.raises(OAuth2Error, match="cannot set up") as caught:
        source()
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(source)


@pytest.mark.parametrize("missing", sorted(ENV))
def test_a_missing_environment_variable_is_a_one_line_config_error_naming_it(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    monkeypatch.delenv(missing)

    with pytest.raises(ConfigError) as caught:
        TokenProvider.from_settings(OAuth2Settings())

    text = str(caught.value)
    assert missing in text
    assert "\n" not in text
    assert SECRET not in text


def test_an_empty_environment_variable_is_a_config_error(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CME_OAUTH2_CLIENT_SECRET", "  ")
    with pytest.raises(ConfigError, match="CME_OAUTH2_CLIENT_SECRET, which is empty"):
        TokenProvider.from_settings(OAuth2Settings())


# --- configuration and wiring -------------------------------------------------------------------

OAUTH2_CONFIG: dict[str, Any] = {
    "mailbox": {
        "backend": "imap",
        "host": "outlook.office365.com",
        "auth": "oauth2",
        "username": SENDER,
    },
    "outbound": {
        "backend": "smtp",
        "host": "smtp.office365.com",
        "auth": "oauth2",
        "username": SENDER,
    },
    "sender_auth": {"mode": "microsoft365"},
    "oauth2": {"tenant_id_env": "CME_OAUTH2_TENANT_ID"},
}


def test_oauth2_section_parses_with_defaults() -> None:
    settings = parse_settings(OAUTH2_CONFIG)
    assert settings.oauth2 == OAuth2Settings()
    assert settings.outbound.password_env is None


def test_bad_oauth2_key_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"^config: oauth2\.client_id_env: "):
        parse_settings({**OAUTH2_CONFIG, "oauth2": {"client_id_env": "not a name"}})
    with pytest.raises(ConfigError, match=r"^config: oauth2\.tenant: unknown key$"):
        parse_settings({**OAUTH2_CONFIG, "oauth2": {"tenant": TENANT}})


def test_wiring_passes_a_token_provider_to_imap_and_smtp(env: dict[str, str]) -> None:
    settings = parse_settings(OAUTH2_CONFIG)

    mailbox = open_mailbox(settings)
    transport = open_transport(settings)

    assert isinstance(mailbox, ImapMailbox)
    assert isinstance(mailbox._token_provider, TokenProvider)
    assert isinstance(transport, SmtpTransport)
    assert isinstance(transport.oauth2_token, TokenProvider)
    assert transport.password is None


def test_wiring_with_a_missing_variable_fails_at_start_up(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CME_OAUTH2_CLIENT_SECRET")
    settings = parse_settings(OAUTH2_CONFIG)

    with pytest.raises(ConfigError, match="CME_OAUTH2_CLIENT_SECRET"):
        open_mailbox(settings)
    with pytest.raises(ConfigError, match="CME_OAUTH2_CLIENT_SECRET"):
        open_transport(settings)


# --- IMAP XOAUTH2 against Dovecot's oauth2 passdb -----------------------------------------------


@pytest.fixture
def oauth_dovecot(dovecot_factory: Callable[..., DovecotServer]) -> DovecotServer:
    return dovecot_factory(oauth2=True)


def imap_with(server: DovecotServer, provider: Callable[[], str], **overrides: Any) -> ImapMailbox:
    return ImapMailbox(server.settings(auth="oauth2", **overrides), None, token_provider=provider)


@pytest.fixture
def imap_source(oauth_dovecot: DovecotServer) -> Source:
    introspection = oauth_dovecot.introspection
    assert introspection is not None
    return Source(grant=lambda token: introspection.grant(token, "cme"))


@pytest.mark.dovecot
def test_imap_logs_in_with_xoauth2_then_fetches_and_files(
    oauth_dovecot: DovecotServer, imap_source: Source
) -> None:
    other = oauth_dovecot.client()  # a password login, as another mail client
    other.append("INBOX", referral(1))
    mb = imap_with(oauth_dovecot, TokenProvider(imap_source))

    [got] = list(mb.fetch_new())
    assert got.raw == referral(1)
    assert mb.file(got.location, "CME/Processed") is True

    assert other.select_folder("INBOX")[b"EXISTS"] == 0
    assert other.select_folder("CME.Processed")[b"EXISTS"] == 1
    assert imap_source.issued == ["tok-1"]
    assert oauth_dovecot.introspection is not None
    assert oauth_dovecot.introspection.asked == ["tok-1"]
    assert "method=XOAUTH2" in oauth_dovecot.log_file.read_text()
    mb.close()
    other.logout()


@pytest.mark.dovecot
@pytest.mark.parametrize("how", ["unknown", "revoked"])
def test_imap_refused_token_is_a_mailbox_error_without_the_token(
    oauth_dovecot: DovecotServer, how: str
) -> None:
    introspection = oauth_dovecot.introspection
    assert introspection is not None
    token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.expired-token.signature"
    if how == "revoked":
        introspection.grant(token)
        introspection.revoke(token)
    mb = imap_with(oauth_dovecot, lambda: token)

    with pytest.raises(MailboxError) as caught:
        mb.noop()

    text = str(caught.value)
    assert "login refused" in text
    assert token not in text
    assert "expired-token" not in text
    assert introspection.asked == [token]  # Dovecot really asked, and was told "inactive"
    mb.close()


@pytest.mark.dovecot
def test_imap_token_source_failure_is_a_mailbox_error(oauth_dovecot: DovecotServer) -> None:
    def refused() -> tuple[str, float]:
        raise OAuth2Error("Entra ID refused a token ...: invalid_client (AADSTS7000215: ...)")

    mb = imap_with(oauth_dovecot, TokenProvider(refused))

    with pytest.raises(MailboxError, match="OAuth2") as caught:
        mb.noop()
    assert SECRET not in str(caught.value)
    assert oauth_dovecot.introspection is not None
    assert oauth_dovecot.introspection.asked == []


@pytest.mark.dovecot
def test_imap_token_is_refreshed_before_expiry_and_asked_for_on_each_reconnect(
    oauth_dovecot: DovecotServer, imap_source: Source
) -> None:
    introspection = oauth_dovecot.introspection
    assert introspection is not None
    clock = Clock()
    provider = Counting(TokenProvider(imap_source, refresh_margin=300, clock=clock))
    mb = imap_with(oauth_dovecot, provider)

    mb.noop()
    assert (provider.calls, imap_source.issued) == (1, ["tok-1"])

    clock.advance(1800)  # half-way: a reconnect asks again and gets the cached token
    mb.reconnect()
    assert (provider.calls, imap_source.issued) == (2, ["tok-1"])

    clock.advance(1800 - 300 + 1)  # inside the refresh margin: a new token, before expiry
    introspection.revoke("tok-1")  # the server would no longer take the old one
    mb.reconnect()
    assert (provider.calls, imap_source.issued) == (3, ["tok-1", "tok-2"])
    assert introspection.asked == ["tok-1", "tok-1", "tok-2"]

    oauth_dovecot.restart()  # the server drops the session: the next call logs in again
    with pytest.raises(MailboxError):
        mb.noop()
    mb.noop()
    assert provider.calls == 4
    assert introspection.asked[-1] == "tok-2"
    mb.close()


@pytest.mark.dovecot
def test_imap_oauth2_without_a_token_provider_is_a_mailbox_error(
    oauth_dovecot: DovecotServer,
) -> None:
    mb = ImapMailbox(oauth_dovecot.settings(auth="oauth2"), None)
    with pytest.raises(MailboxError, match="token provider"):
        mb.noop()


# --- SMTP XOAUTH2 against aiosmtpd --------------------------------------------------------------


@pytest.fixture
def oauth_smtp(smtp_factory: Callable[..., SmtpServer]) -> SmtpServer:
    return smtp_factory(oauth2_tokens={})


@pytest.fixture
def smtp_source(oauth_smtp: SmtpServer) -> Source:
    return Source(grant=lambda token: oauth_smtp.grant(token, SENDER))


def smtp_with(server: SmtpServer, provider: Callable[[], str] | None) -> SmtpTransport:
    return SmtpTransport(
        server.host, server.port, "none", username=SENDER, timeout=10, oauth2_token=provider
    )


@pytest.fixture
def transports() -> Iterator[list[SmtpTransport]]:
    made: list[SmtpTransport] = []
    yield made
    for t in made:
        t.close()


def test_smtp_sends_with_xoauth2(
    oauth_smtp: SmtpServer, smtp_source: Source, transports: list[SmtpTransport]
) -> None:
    t = smtp_with(oauth_smtp, TokenProvider(smtp_source))
    transports.append(t)

    assert t.send(RAW, SENDER, ["office@school.example"]) == []
    assert t.send(RAW, SENDER, ["head@school.example"]) == []  # same connection, no new AUTH

    assert [m.auth_user for m in oauth_smtp.messages] == [SENDER, SENDER]
    assert oauth_smtp.messages[0].data == RAW
    assert oauth_smtp.auth_attempts == [(SENDER, "tok-1")]
    assert smtp_source.calls == 1


def test_smtp_server_takes_no_mail_without_auth(
    oauth_smtp: SmtpServer, transports: list[SmtpTransport]
) -> None:
    t = SmtpTransport(oauth_smtp.host, oauth_smtp.port, "none", timeout=10)
    transports.append(t)
    with pytest.raises(Exception, match="530"):
        t.send(RAW, SENDER, ["office@school.example"])
    assert oauth_smtp.messages == []


def test_smtp_refused_token_answers_the_error_challenge_empty_and_fails_temporarily(
    oauth_smtp: SmtpServer, transports: list[SmtpTransport]
) -> None:
    token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.expired-token.signature"
    t = smtp_with(oauth_smtp, lambda: token)
    transports.append(t)

    with pytest.raises(TemporaryFailure) as caught:
        t.send(RAW, SENDER, ["office@school.example"])

    assert "535" in str(caught.value)
    assert token not in str(caught.value)
    assert oauth_smtp.auth_attempts == [(SENDER, token)]  # the token went once, not again
    assert oauth_smtp.error_challenge_replies == [b""]
    assert oauth_smtp.messages == []


def test_smtp_token_source_failure_is_a_temporary_failure(
    oauth_smtp: SmtpServer, transports: list[SmtpTransport]
) -> None:
    def refused() -> tuple[str, float]:
        raise OAuth2Error("Entra ID refused a token ...: invalid_client (AADSTS7000215: ...)")

    t = smtp_with(oauth_smtp, TokenProvider(refused))
    transports.append(t)

    with pytest.raises(TemporaryFailure, match="AADSTS7000215"):
        t.send(RAW, SENDER, ["office@school.example"])
    assert oauth_smtp.auth_attempts == []


def test_smtp_new_connection_gets_a_refreshed_token(
    oauth_smtp: SmtpServer, smtp_source: Source, transports: list[SmtpTransport]
) -> None:
    clock = Clock()
    t = smtp_with(oauth_smtp, TokenProvider(smtp_source, refresh_margin=300, clock=clock))
    transports.append(t)
    t.send(RAW, SENDER, ["office@school.example"])

    clock.advance(3600 - 299)
    oauth_smtp.revoke("tok-1")
    oauth_smtp.stop()  # the connection drops; the transport reconnects on the next send
    oauth_smtp.start()
    with pytest.raises(TemporaryFailure):
        t.send(RAW, SENDER, ["office@school.example"])  # the dead connection
    assert t.send(RAW, SENDER, ["office@school.example"]) == []

    assert [a[1] for a in oauth_smtp.auth_attempts] == ["tok-1", "tok-2"]
    assert len(oauth_smtp.messages) == 2
