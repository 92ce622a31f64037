"""The console's tables: users, sign-in attempts (for throttling) and server-side sessions.

A browser holds only an opaque random session id; the database keeps its SHA-256, so a copy of
the database cannot be replayed as a cookie, and a session is revoked by deleting its row.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlmodel import Field, SQLModel

from cme_mailbot.models import UTCDateTime, utcnow


class Role(enum.StrEnum):
    ADMINISTRATOR = "administrator"
    OFFICER = "officer"


class User(SQLModel, table=True):
    __tablename__ = "web_user"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(index=True, unique=True, max_length=64)
    role: Role
    password_hash: str  # argon2id, PHC string
    failed_attempts: int = 0
    locked_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_sign_in_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    active: bool = True


class SignInAttempt(SQLModel, table=True):
    """Every sign-in attempt, kept for throttling by username and by client address."""

    __tablename__ = "web_sign_in_attempt"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    username: str = Field(index=True, max_length=64)
    client_ip: str = Field(index=True, max_length=64)
    success: bool = False


class WebSession(SQLModel, table=True):
    """One signed-in browser. `id` is the SHA-256 (hex) of the cookie value, never the value."""

    __tablename__ = "web_session"

    id: str = Field(primary_key=True, max_length=64)
    user_id: int = Field(foreign_key="web_user.id", index=True)
    csrf_token: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_seen_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    client_ip: str = Field(default="", max_length=64)
    flash: str | None = Field(default=None, max_length=500)  # one notice for the next page
