"""Console users: add, list, remove, set a password. Passwords are hashed with argon2id
(argon2-cffi, the OWASP-recommended algorithm with its maintained parameters).

Shared by the `users` commands and the console's own users page; every change is audited.
"""

from __future__ import annotations

import functools
import re

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlmodel import Session, col, delete, select

from cme_mailbot.models import AuditEvent
from cme_mailbot.web.models import Role, User, WebSession

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._@-]{1,63}$")
MAX_PASSWORD_LENGTH = 1024  # argon2 would hash anything; a bound keeps sign-in cheap

_hasher = PasswordHasher()


@functools.cache
def dummy_hash() -> str:
    """Verified when a username is unknown, so an unknown name costs as much time as a wrong
    password. Made on first use (the web app makes it at start-up), not on import: hashing costs
    a tenth of a second that every command would pay."""
    return _hasher.hash("not a real password, only for timing")


class AccountError(ValueError):
    """Bad input about a console user; one line, naming the problem."""


def normalise_username(username: str) -> str:
    name = username.strip().lower()
    if not USERNAME_RE.match(name):
        raise AccountError(
            "a username is 2 to 64 characters: lower-case letters, digits and . _ @ -"
        )
    return name


def parse_role(role: str) -> Role:
    try:
        return Role(role.strip().lower())
    except ValueError:
        raise AccountError(
            f"role must be {' or '.join(r.value for r in Role)}, not {role!r}"
        ) from None


def check_password(password: str, username: str, min_length: int = 12) -> None:
    """Length over complexity (NCSC guidance): long enough, not absurdly long, not the name."""
    if len(password) < min_length:
        raise AccountError(f"a password needs at least {min_length} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"a password may have at most {MAX_PASSWORD_LENGTH} characters")
    if password.strip().lower() == username.lower():
        raise AccountError("a password must not be the username")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(user: User | None, password: str) -> bool:
    """True when `password` is the user's. Takes the same time for an unknown user."""
    if len(password) > MAX_PASSWORD_LENGTH:
        return False
    try:
        return _hasher.verify(user.password_hash if user else dummy_hash(), password) and (
            user is not None
        )
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(user: User) -> bool:
    return _hasher.check_needs_rehash(user.password_hash)


def find_user(session: Session, username: str) -> User | None:
    return session.exec(select(User).where(User.username == username.strip().lower())).first()


def get_user(session: Session, username: str) -> User:
    user = find_user(session, username)
    if user is None:
        raise AccountError(f"no such user: {username.strip().lower()}")
    return user


def list_users(session: Session) -> list[User]:
    return list(session.exec(select(User).order_by(col(User.username))).all())


def _audit(session: Session, actor: str, action: str, username: str, detail: str = "") -> None:
    session.add(AuditEvent(actor=actor, action=action, target=f"user {username}", detail=detail))


def add_user(
    session: Session,
    username: str,
    role: str,
    password: str,
    *,
    actor: str = "cli",
    min_length: int = 12,
) -> User:
    name = normalise_username(username)
    the_role = parse_role(role)
    check_password(password, name, min_length)
    if find_user(session, name) is not None:
        raise AccountError(f"user already exists: {name}")
    user = User(username=name, role=the_role, password_hash=hash_password(password))
    session.add(user)
    session.flush()
    _audit(session, actor, "user.add", name, f"role {the_role.value}")
    return user


def revoke_sessions(session: Session, user: User) -> None:
    session.exec(delete(WebSession).where(col(WebSession.user_id) == user.id))


def remove_user(session: Session, username: str, *, actor: str = "cli") -> None:
    user = get_user(session, username)
    revoke_sessions(session, user)
    session.flush()
    session.delete(user)
    _audit(session, actor, "user.remove", user.username)


def set_password(
    session: Session, username: str, password: str, *, actor: str = "cli", min_length: int = 12
) -> User:
    """A new password also unlocks the account and signs out its other sessions."""
    user = get_user(session, username)
    check_password(password, user.username, min_length)
    user.password_hash = hash_password(password)
    user.failed_attempts, user.locked_until = 0, None
    session.add(user)
    revoke_sessions(session, user)
    _audit(session, actor, "user.set_password", user.username)
    return user


def set_active(session: Session, username: str, active: bool, *, actor: str) -> User:
    user = get_user(session, username)
    user.active = active
    if not active:
        revoke_sessions(session, user)
    else:
        user.failed_attempts, user.locked_until = 0, None
    session.add(user)
    _audit(session, actor, "user.enable" if active else "user.disable", user.username)
    return user
