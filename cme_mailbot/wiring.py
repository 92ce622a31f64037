"""Builds the real parts from settings: the database, the mailbox and the transport."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from cme_mailbot.config import Settings, secret
from cme_mailbot.db import make_engine
from cme_mailbot.mailbox import Mailbox, imap_account, maildir_account
from cme_mailbot.mailbox.maildir import MaildirMailbox
from cme_mailbot.oauth import TokenProvider
from cme_mailbot.transport import Transport
from cme_mailbot.transport.outbox import OutboxTransport
from cme_mailbot.transport.smtp import SmtpTransport


def open_database(settings: Settings) -> Engine:
    """The engine, once the schema is the one this version needs (cme_mailbot.migrate)."""
    from cme_mailbot.migrate import prepare_database

    engine = make_engine(settings.database.url)
    try:
        prepare_database(engine, auto_upgrade=settings.database.auto_upgrade)
    except BaseException:
        engine.dispose()
        raise
    return engine


def open_mailbox(settings: Settings) -> Mailbox:
    mb = settings.mailbox
    if mb.backend == "maildir":
        return MaildirMailbox(mb.path, mb.folder, mb.max_message_bytes)
    from cme_mailbot.mailbox.imap import ImapMailbox

    if mb.auth == "oauth2":
        return ImapMailbox(mb, None, token_provider=TokenProvider.from_settings(settings.oauth2))
    return ImapMailbox(mb, secret(mb.password_env, "mailbox.password_env"))


def mailbox_account(settings: Settings) -> str:
    """The ledger name of the configured mailbox, without connecting to it."""
    mb = settings.mailbox
    if mb.backend == "maildir":
        return maildir_account(mb.path)
    return imap_account(mb.username, mb.host, mb.port)


def open_transport(settings: Settings) -> Transport:
    ob = settings.outbound
    if ob.backend == "outbox":
        return OutboxTransport(ob.path)
    oauth2 = ob.auth == "oauth2"
    return SmtpTransport(
        ob.host,
        ob.port,
        ob.security,
        username=ob.username,
        password=None if oauth2 else secret(ob.password_env, "outbound.password_env"),
        oauth2_token=TokenProvider.from_settings(settings.oauth2) if oauth2 else None,
        timeout=ob.timeout_seconds,
        ca_file=ob.ca_file,
    )
