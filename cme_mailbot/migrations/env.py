"""Alembic environment: migrates the connection `cme_mailbot.migrate` hands over.

There is no alembic.ini: `cme_mailbot.migrate.alembic_config` builds the configuration, opens
(and locks) the connection and passes it in `config.attributes["connection"]`.
"""

from __future__ import annotations

from alembic import context

from cme_mailbot.migrate import migration_options

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "run migrations through `cme-mailbot db upgrade` (or cme_mailbot.migrate), "
        "not the bare alembic command"
    )
context.configure(connection=connection, **migration_options(connection))
with context.begin_transaction():
    context.run_migrations()
