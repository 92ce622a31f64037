"""Signing in and out: throttled password checks and revocable server-side sessions.

A failed sign-in counts against the username (5 failures lock it for 15 minutes, by default)
and against the client address (a larger budget, since a council office shares one address).
An unknown username is throttled exactly like a known one, so the answers reveal nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from sqlmodel import Session, col, func, select

from cme_mailbot.models import AuditEvent, utcnow
from cme_mailbot.web import accounts
from cme_mailbot.web.models import SignInAttempt, User, WebSession
from cme_mailbot.web.settings import WebSettings

SIGN_IN_FAILED = "The username or password is not right, or the account is locked."
THROTTLED = (
    "Too many failed sign-ins. Wait {minutes} minutes and try again, or ask an administrator "
    "to reset your password."
)


@dataclass(frozen=True)
class SignInResult:
    user: User | None
    error: str | None
    token: str | None = None  # the cookie value of the new session


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def _failures_since(session: Session, since: dt.datetime, **where: str) -> int:
    query = select(func.count()).select_from(SignInAttempt).where(SignInAttempt.at >= since)
    query = query.where(col(SignInAttempt.success).is_(False))
    for key, value in where.items():
        query = query.where(getattr(SignInAttempt, key) == value)
    return int(session.exec(query).one())


def sign_in(
    session: Session,
    username: str,
    password: str,
    client_ip: str,
    web: WebSettings,
    now: dt.datetime | None = None,
) -> SignInResult:
    """Check a password under throttling; on success, open a session. Commits nothing."""
    now = now or utcnow()
    name = username.strip().lower()[:64]
    window = now - dt.timedelta(minutes=web.lockout_minutes)
    throttled = THROTTLED.format(minutes=web.lockout_minutes)

    def record(success: bool) -> None:
        session.add(SignInAttempt(at=now, username=name, client_ip=client_ip, success=success))

    if _failures_since(session, window, client_ip=client_ip) >= web.max_failed_sign_ins_per_ip:
        record(False)
        return SignInResult(None, throttled)
    user = accounts.find_user(session, name) if name else None
    if user is None:
        accounts.verify_password(None, password)  # same cost as a real check
        record(False)
        if _failures_since(session, window, username=name) >= web.max_failed_sign_ins:
            return SignInResult(None, throttled)
        return SignInResult(None, SIGN_IN_FAILED)
    if user.locked_until is not None and user.locked_until > now:
        record(False)
        return SignInResult(None, throttled)
    if not accounts.verify_password(user, password) or not user.active:
        record(False)
        user.failed_attempts += 1
        if user.failed_attempts >= web.max_failed_sign_ins:
            user.locked_until = now + dt.timedelta(minutes=web.lockout_minutes)
            user.failed_attempts = 0
            session.add(
                AuditEvent(
                    actor="console",
                    action="user.locked",
                    target=f"user {user.username}",
                    detail=f"{web.max_failed_sign_ins} failed sign-ins",
                )
            )
            session.add(user)
            return SignInResult(None, throttled)
        session.add(user)
        return SignInResult(None, SIGN_IN_FAILED)
    record(True)
    if accounts.needs_rehash(user):
        user.password_hash = accounts.hash_password(password)
    user.failed_attempts, user.locked_until, user.last_sign_in_at = 0, None, now
    session.add(user)
    token = open_session(session, user, client_ip, web, now)
    return SignInResult(user, None, token)


def open_session(
    session: Session, user: User, client_ip: str, web: WebSettings, now: dt.datetime
) -> str:
    token = secrets.token_urlsafe(32)
    assert user.id is not None
    session.add(
        WebSession(
            id=_hash_token(token),
            user_id=user.id,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            last_seen_at=now,
            expires_at=now + dt.timedelta(hours=web.session_max_hours),
            client_ip=client_ip,
        )
    )
    return token


def load_session(
    session: Session, token: str, web: WebSettings, now: dt.datetime | None = None
) -> tuple[WebSession, User] | None:
    """The live session and its active user for a cookie value, touching its idle clock."""
    if not token or len(token) > 128:
        return None
    now = now or utcnow()
    row = session.get(WebSession, _hash_token(token))
    if row is None:
        return None
    idle = dt.timedelta(minutes=web.session_idle_minutes)
    if row.expires_at <= now or row.last_seen_at + idle <= now:
        session.delete(row)
        return None
    user = session.get(User, row.user_id)
    if user is None or not user.active:
        session.delete(row)
        return None
    if now - row.last_seen_at > dt.timedelta(seconds=30):  # fewer writes, same protection
        row.last_seen_at = now
        session.add(row)
    return row, user


def end_session(session: Session, token: str) -> None:
    row = session.get(WebSession, _hash_token(token))
    if row is not None:
        session.delete(row)


def prune(session: Session, web: WebSettings, now: dt.datetime | None = None) -> None:
    """Drop expired sessions and sign-in attempts older than a day."""
    now = now or utcnow()
    for row in session.exec(select(WebSession).where(WebSession.expires_at <= now)).all():
        session.delete(row)
    old = now - dt.timedelta(days=1)
    for attempt in session.exec(select(SignInAttempt).where(SignInAttempt.at < old)).all():
        session.delete(attempt)
