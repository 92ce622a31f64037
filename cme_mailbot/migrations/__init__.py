"""Alembic migrations for the cme-mailbot schema; applied by `cme_mailbot.migrate`."""
