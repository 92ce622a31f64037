"""OAuth2 bearer tokens for IMAP and SMTP XOAUTH2 (Microsoft 365 / Exchange Online).

Exchange Online has retired basic authentication: an unattended service reaches a mailbox with
an app registration in Entra ID (IMAP.AccessAsApp, SMTP.SendAsApp) and a token from the OAuth2
client-credentials flow, which MSAL implements. `TokenProvider` is the callable that
`ImapMailbox(token_provider=...)` and `SmtpTransport(oauth2_token=...)` take: it returns a
bearer token, keeps it, and fetches a new one when less than `refresh_margin` seconds of it are
left, so a connection opened just before expiry still logs in.

The token source behind it is any callable returning (access_token, expires_in_seconds);
`MsalClientCredentials` is the real one, and tests inject their own so that nothing here ever
contacts login.microsoftonline.com. MSAL is imported and its application built only on the
first token request. The client secret is read from the environment once, at start-up, and is
never put into an exception, a log line or a repr.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_SCOPE = "https://outlook.office365.com/.default"
"""Exchange Online's resource: one token serves both IMAP.AccessAsApp and SMTP.SendAsApp."""

DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"

TokenSource = Callable[[], tuple[str, float]]
"""Returns (access_token, seconds until it expires); raises OAuth2Error when it cannot."""

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_AADSTS = re.compile(r"\bAADSTS\d+\b")


class OAuth2Error(RuntimeError):
    """No token could be had. The message is one line naming the cause (the Entra ID error and
    its AADSTS code where there is one); it never holds the client secret or a token."""


class OAuth2Settings(BaseModel):
    """The [oauth2] section: which app registration to get tokens as (Microsoft 365).

    Used by [mailbox] and [outbound] when their `auth = "oauth2"`. The tenant id, client id and
    client secret are read from the environment variables named here, never from the file.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant_id_env: str = "CME_OAUTH2_TENANT_ID"
    client_id_env: str = "CME_OAUTH2_CLIENT_ID"
    client_secret_env: str = "CME_OAUTH2_CLIENT_SECRET"  # noqa: S105 - a variable name
    scope: str = DEFAULT_SCOPE
    authority_host: str = DEFAULT_AUTHORITY_HOST
    refresh_margin_seconds: float = Field(default=300.0, ge=0, le=1800)
    timeout_seconds: float = Field(default=30.0, gt=0)

    @field_validator("tenant_id_env", "client_id_env", "client_secret_env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        if not _ENV_NAME.match(v):
            raise ValueError("must be the name of an environment variable")
        return v

    @field_validator("scope")
    @classmethod
    def _scope(cls, v: str) -> str:
        v = v.strip()
        if not v or " " in v:
            raise ValueError("must be one scope, e.g. https://outlook.office365.com/.default")
        return v

    @field_validator("authority_host")
    @classmethod
    def _https(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not re.match(r"https://[A-Za-z0-9.-]+\Z", v):
            raise ValueError("must be an https:// host, e.g. https://login.microsoftonline.com")
        return v


class TokenProvider:
    """A bearer token on demand: cached, refreshed before expiry, safe to share across threads.

    `source` returns (token, expires_in); it is called on the first request, and again whenever
    less than `refresh_margin` seconds of the cached token remain (or after `invalidate`).
    Only one thread fetches at a time; the others wait and get the same token.
    """

    def __init__(
        self,
        source: TokenSource,
        *,
        refresh_margin: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if refresh_margin < 0:
            raise ValueError("refresh_margin must be >= 0")
        self._source = source
        self._margin = float(refresh_margin)
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0

    @classmethod
    def from_settings(
        cls, settings: OAuth2Settings, *, clock: Callable[[], float] = time.monotonic
    ) -> TokenProvider:
        """The MSAL-backed provider for `settings`, reading the three environment variables now.

        A missing or empty variable is a ConfigError naming it, raised at start-up. Nothing is
        fetched until the first call.
        """
        source = MsalClientCredentials(
            tenant_id=_from_env(settings.tenant_id_env, "oauth2.tenant_id_env"),
            client_id=_from_env(settings.client_id_env, "oauth2.client_id_env"),
            client_secret=_from_env(settings.client_secret_env, "oauth2.client_secret_env"),
            scope=settings.scope,
            authority_host=settings.authority_host,
            timeout=settings.timeout_seconds,
        )
        return cls(source, refresh_margin=settings.refresh_margin_seconds, clock=clock)

    def __call__(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is None or self._expires_at - now < self._margin:
                token, expires_in = _checked(self._source())
                # Counted from before the request, so the cached expiry errs on the early side.
                self._token, self._expires_at = token, now + expires_in
            return self._token

    @property
    def expires_in(self) -> float | None:
        """Seconds until the cached token expires; None when there is none."""
        with self._lock:
            if self._token is None:
                return None
            return self._expires_at - self._clock()

    def invalidate(self) -> None:
        """Forget the cached token (say, after a server refused it): the next call fetches."""
        with self._lock:
            self._token = None
            self._expires_at = 0.0
            forget = getattr(self._source, "invalidate", None)
            if callable(forget):
                forget()

    def __repr__(self) -> str:
        return f"TokenProvider(source={self._source!r}, refresh_margin={self._margin:g})"


class MsalClientCredentials:
    """A TokenSource: MSAL ConfidentialClientApplication.acquire_token_for_client.

    The application (and its in-memory token cache) is built on the first call, so start-up
    needs no network; a failed build is retried on the next call. `app_factory` replaces
    `msal.ConfidentialClientApplication` (tests).
    """

    def __init__(
        self,
        *,
        tenant_id: str,
        client_id: str,
        client_secret: str,
        scope: str = DEFAULT_SCOPE,
        authority_host: str = DEFAULT_AUTHORITY_HOST,
        timeout: float = 30.0,
        app_factory: Callable[..., Any] | None = None,
    ):
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.scope = scope
        self.authority = f"{authority_host.rstrip('/')}/{tenant_id}"
        self.timeout = timeout
        self.__secret = client_secret  # name-mangled, and left out of repr
        self._app_factory = app_factory
        self._app: Any = None
        self._lock = threading.Lock()

    def __call__(self) -> tuple[str, float]:
        with self._lock:
            app = self._application()
            try:
                result = app.acquire_token_for_client(scopes=[self.scope])
            except Exception as exc:
                raise OAuth2Error(
                    self._clean(
                        f"token request to {self.authority} failed: {type(exc).__name__}: {exc}"
                    )
                ) from None
        if not isinstance(result, dict):
            raise OAuth2Error(f"token request to {self.authority} gave no answer")
        if result.get("access_token"):
            return str(result["access_token"]), float(result.get("expires_in") or 0)
        raise OAuth2Error(self._refusal(result))

    def invalidate(self) -> None:
        """Drop the MSAL application and its token cache: the next call asks Entra ID afresh."""
        with self._lock:
            self._app = None

    def _application(self) -> Any:
        if self._app is None:
            factory = self._app_factory
            if factory is None:
                import msal  # type: ignore[import-untyped]  # imported only when used

                factory = msal.ConfidentialClientApplication
            try:
                self._app = factory(
                    self.client_id,
                    client_credential=self.__secret,
                    authority=self.authority,
                    timeout=self.timeout,
                )
            except Exception as exc:  # authority discovery: bad tenant, no network
                raise OAuth2Error(
                    self._clean(
                        f"cannot set up the Entra ID client for {self.authority}: "
                        f"{type(exc).__name__}: {exc}"
                    )
                ) from None
        return self._app

    def _refusal(self, result: dict[str, Any]) -> str:
        error = str(result.get("error") or "unknown_error")
        description = str(result.get("error_description") or "")
        first_line = description.strip().splitlines()[0] if description.strip() else ""
        code = _AADSTS.search(description)
        text = (
            f"Entra ID refused a token for client {self.client_id} in tenant {self.tenant_id}: "
            f"{error}"
        )
        if first_line:
            text += f" ({first_line})"
        elif code:
            text += f" ({code.group(0)})"
        if result.get("correlation_id"):
            text += f" [correlation id {result['correlation_id']}]"
        return self._clean(text)

    def _clean(self, text: str) -> str:
        """One line, at most 300 characters, with the secret blanked should anything echo it."""
        if self.__secret:
            text = text.replace(self.__secret, "***")
        text = " ".join(text.split())
        return text if len(text) <= 300 else text[:297] + "..."

    def __repr__(self) -> str:
        return (
            f"MsalClientCredentials(tenant_id={self.tenant_id!r}, client_id={self.client_id!r}, "
            f"scope={self.scope!r})"
        )


def _checked(answer: tuple[str, float]) -> tuple[str, float]:
    try:
        token, expires_in = answer
        expires = float(expires_in)
    except (TypeError, ValueError):
        raise OAuth2Error("the token source did not return (token, expires_in)") from None
    if not isinstance(token, str) or not token:
        raise OAuth2Error("the token source returned an empty token")
    if not expires > 0:
        raise OAuth2Error("the token source returned a token that has already expired")
    return token, expires


def _from_env(env_name: str, what: str) -> str:
    from cme_mailbot.config import ConfigError, secret  # config.py imports this module

    value = secret(env_name, what)
    if not value or not value.strip():
        raise ConfigError(f"config: {what} names environment variable {env_name}, which is empty")
    return value.strip()
