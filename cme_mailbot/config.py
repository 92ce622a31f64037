"""TOML configuration -> typed, frozen settings. Loud about bad values; secrets come from env.

Every key is documented in `config.example.toml`. A bad or unknown key is a `ConfigError` whose
one-line message names the key, raised at start-up rather than an hour into a run.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cme_mailbot.oauth import OAuth2Settings
from cme_mailbot.web.settings import WebSettings

CONFIG_ENV = "CME_MAILBOT_CONFIG"


class ConfigError(ValueError):
    """The configuration is unusable; the message is one line naming the problem."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Port = Annotated[int, Field(ge=1, le=65535)]


class DatabaseSettings(_Section):
    url: str = "sqlite:///var/cme-mailbot.db"
    # Upgrade an older schema at start-up; unset means yes for SQLite, no for PostgreSQL.
    auto_upgrade: bool | None = None

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if not v.startswith(("sqlite://", "postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        return v


def _plain_only_on_loopback(host: str, security: str) -> None:
    """Children's data never cross a network in clear text."""
    if security == "none" and host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("security: 'none' is allowed only for a loopback host")


class MailboxSettings(_Section):
    backend: Literal["imap", "maildir"] = "maildir"
    path: Path = Path("var/mailbox")
    host: str = "localhost"
    port: Port = 993
    security: Literal["ssl", "starttls", "none"] = "ssl"
    auth: Literal["password", "oauth2"] = "password"
    username: str = ""
    password_env: str = "CME_IMAP_PASSWORD"  # noqa: S105 - a variable name, not a secret
    ca_file: Path | None = None
    folder: str = "INBOX"
    processed_folder: str = "CME/Processed"
    rejected_folder: str = "CME/Rejected"
    quarantine_folder: str = "CME/Quarantine"
    max_message_bytes: int = Field(default=30 * 1024 * 1024, gt=0)
    batch_size: int = Field(default=50, ge=1, le=1000)
    timeout_seconds: float = Field(default=30.0, gt=0)
    idle: bool = True

    @model_validator(mode="after")
    def _imap_needs_host(self) -> MailboxSettings:
        if self.backend == "imap":
            if not self.username:
                raise ValueError("username: required for the imap backend")
            _plain_only_on_loopback(self.host, self.security)
        return self


class MailboxEntry(MailboxSettings):
    """One of several mailboxes served by one process (`[[mailboxes]]`), e.g. a shared service
    for several councils: its own folders, approved list (`name`), reply address and contacts."""

    name: str
    from_address: str | None = None
    from_name: str | None = None
    council_name: str | None = None
    team_phone: str | None = None
    alert_to: tuple[str, ...] | None = None
    mash_phone: str | None = None
    mash_email: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or not all(ch.isalnum() or ch in "-_." for ch in v):
            raise ValueError("letters, digits, '-', '_' and '.' only")
        return v

    def mailbox(self) -> MailboxSettings:
        keys = set(MailboxSettings.model_fields)
        return MailboxSettings(**{k: v for k, v in self.model_dump().items() if k in keys})


class OutboundSettings(_Section):
    backend: Literal["smtp", "outbox"] = "outbox"
    path: Path = Path("var/outbox")
    host: str = "localhost"
    port: Port = 587
    security: Literal["ssl", "starttls", "none"] = "starttls"
    auth: Literal["password", "oauth2"] = "password"
    username: str | None = None
    password_env: str | None = None
    ca_file: Path | None = None
    from_address: str = "cme-referrals@example.gov.uk"
    from_name: str = "Children Missing Education team"
    timeout_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=8, ge=1)
    retry_base_seconds: float = Field(default=30.0, gt=0)

    @field_validator("from_address")
    @classmethod
    def _address(cls, v: str) -> str:
        if "@" not in v or " " in v.strip():
            raise ValueError("must be an email address")
        return v.strip()

    @model_validator(mode="after")
    def _auth_pair(self) -> OutboundSettings:
        if self.auth == "oauth2":
            if not self.username:
                raise ValueError("username: required when auth = oauth2 (the mailbox sent as)")
            if self.password_env is not None:
                raise ValueError("password_env: not used when auth = oauth2; remove it")
        elif (self.username is None) != (self.password_env is None):
            raise ValueError("username and password_env go together: set both or neither")
        if self.backend == "smtp":
            _plain_only_on_loopback(self.host, self.security)
        return self


class SenderAuthSettings(_Section):
    require: bool = True
    # "authserv-id": trust the topmost Authentication-Results with one of the ids below.
    # "microsoft365": Exchange Online stamps no authserv-id; trust the topmost header and require
    # compauth=pass with dmarc=pass.
    mode: Literal["authserv-id", "microsoft365"] = "authserv-id"
    trusted_authserv_ids: tuple[str, ...] = ()

    @field_validator("trusted_authserv_ids")
    @classmethod
    def _lower(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(i.strip().lower() for i in v if i.strip())


class SafeguardingSettings(_Section):
    alert_to: tuple[str, ...] = ()
    mash_phone: str = ""
    mash_email: str = ""


class CouncilSettings(_Section):
    name: str = "the council"
    team_name: str = "Children Missing Education team"
    team_phone: str = ""
    ehe_contact: str = "the Elective Home Education team"
    admissions_contact: str = "the School Admissions team"
    contacts_help: str = (
        "ask your headteacher to email the CME team from the school's main address, "
        "giving your name, role, email address and the school's URN"
    )


class PollerSettings(_Section):
    interval_seconds: float = Field(default=60, gt=0)
    lease_seconds: float = Field(default=600, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    replies_per_sender_per_hour: int = Field(default=30, ge=1)
    # A backlog of `parallel_from` or more messages is shared between `workers` processes. Each
    # already keeps its sandbox worker busy alongside it: about one per two CPU cores.
    workers: int = Field(default=1, ge=1, le=64)
    parallel_from: int = Field(default=50, ge=2)
    file_batch: int = Field(default=50, ge=1, le=500)  # decided messages filed with one MOVE


class LimitsSettings(_Section):
    """What an untrusted message or attachment may cost before it is quarantined unread."""

    max_attachment_bytes: int = Field(default=15 * 1024 * 1024, gt=0)
    max_attachments: int = Field(default=20, ge=1)
    # Form files are read in a child process with these limits, so no file can take the
    # poller down or exhaust its memory.
    sandbox: bool = True
    parse_cpu_seconds: int = Field(default=20, ge=1)
    parse_memory_mb: int = Field(default=512, ge=64)
    parse_timeout_seconds: float = Field(default=30.0, gt=0)


class LoggingSettings(_Section):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(_Section):
    database: DatabaseSettings = DatabaseSettings()
    mailbox: MailboxSettings = MailboxSettings()
    outbound: OutboundSettings = OutboundSettings()
    sender_auth: SenderAuthSettings = SenderAuthSettings()
    safeguarding: SafeguardingSettings = SafeguardingSettings()
    council: CouncilSettings = CouncilSettings()
    poller: PollerSettings = PollerSettings()
    limits: LimitsSettings = LimitsSettings()
    oauth2: OAuth2Settings = OAuth2Settings()
    web: WebSettings = WebSettings()
    logging: LoggingSettings = LoggingSettings()
    mailboxes: tuple[MailboxEntry, ...] = ()

    @model_validator(mode="after")
    def _trust_needs_ids(self) -> Settings:
        auth = self.sender_auth
        if auth.require and auth.mode == "authserv-id" and not auth.trusted_authserv_ids:
            raise ValueError(
                "sender_auth.trusted_authserv_ids: needs your border MTA's authserv-id "
                "when require = true"
            )
        if self.mailboxes and "mailbox" in self.model_fields_set:
            raise ValueError("mailboxes: use either one [mailbox] or several [[mailboxes]]")
        names = [m.name for m in self.mailboxes]
        if len(set(names)) != len(names):
            raise ValueError("mailboxes: each entry needs its own name")
        return self

    def profiles(self) -> list[Profile]:
        """One complete settings view per mailbox this process serves."""
        if not self.mailboxes:
            return [Profile("default", self)]
        out = []
        for entry in self.mailboxes:
            sg, council, ob = self.safeguarding, self.council, self.outbound
            out.append(
                Profile(
                    entry.name,
                    self.model_copy(
                        update={
                            "mailbox": entry.mailbox(),
                            "outbound": ob.model_copy(
                                update={
                                    "from_address": entry.from_address or ob.from_address,
                                    "from_name": entry.from_name or ob.from_name,
                                }
                            ),
                            "council": council.model_copy(
                                update={
                                    "name": entry.council_name or council.name,
                                    "team_phone": entry.team_phone or council.team_phone,
                                }
                            ),
                            "safeguarding": sg.model_copy(
                                update={
                                    "alert_to": sg.alert_to
                                    if entry.alert_to is None
                                    else entry.alert_to,
                                    "mash_phone": entry.mash_phone or sg.mash_phone,
                                    "mash_email": entry.mash_email or sg.mash_email,
                                }
                            ),
                            "mailboxes": (),
                        }
                    ),
                )
            )
        return out


@dataclass(frozen=True)
class Profile:
    """A mailbox and the settings it runs with; `name` scopes its approved-sender list."""

    name: str
    settings: Settings


EMBEDDED = Settings(sender_auth=SenderAuthSettings(require=False))
"""The embedded defaults (Maildir in, .eml outbox out, sender check off): demos and trials only."""


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    # Messages from model validators name their own key ("username: required ...").
    if ":" in msg.split(" ", 1)[0]:
        key, _, rest = msg.partition(":")
        loc = f"{loc}.{key}" if loc else key
        msg = rest.strip()
    return f"{loc}: {msg}" if loc else msg


def parse_settings(data: dict[str, Any]) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"config: {_describe(exc)}") from None


def load_settings(path: Path | None) -> Settings:
    """Load settings from `path`, else $CME_MAILBOT_CONFIG, else built-in embedded defaults."""
    if path is None and os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV])
    if path is None:
        return EMBEDDED
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config: file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path} is not valid TOML: {exc}") from None
    return parse_settings(data)


def secret(env_name: str | None, what: str) -> str | None:
    """Read a secret from the environment variable the config names; never from the file."""
    if not env_name:
        return None
    value = os.environ.get(env_name)
    if value is None:
        raise ConfigError(f"config: {what} names environment variable {env_name}, which is not set")
    return value
