"""Approved lists per mailbox (ApprovedContact.scope) and poller health columns.

Reviewed: the NOT NULL columns get server defaults so existing rows can take them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 23:40:47.830939
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("approvedcontact", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("scope", sa.String(), nullable=False, server_default="default")
        )
        batch_op.drop_index(batch_op.f("ix_approvedcontact_email"))
        batch_op.create_index(batch_op.f("ix_approvedcontact_email"), ["email"], unique=False)
        batch_op.create_index(batch_op.f("ix_approvedcontact_scope"), ["scope"], unique=False)
        batch_op.create_unique_constraint(
            batch_op.f("uq_approvedcontact_scope_email"), ["scope", "email"]
        )

    with op.batch_alter_table("pollerstatus", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("auth_failing", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("last_duration_seconds", sa.Float(), nullable=True))
        batch_op.add_column(
            sa.Column("last_backlog", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("pollerstatus", schema=None) as batch_op:
        batch_op.drop_column("last_backlog")
        batch_op.drop_column("last_duration_seconds")
        batch_op.drop_column("auth_failing")

    with op.batch_alter_table("approvedcontact", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_approvedcontact_scope_email"), type_="unique")
        batch_op.drop_index(batch_op.f("ix_approvedcontact_scope"))
        batch_op.drop_index(batch_op.f("ix_approvedcontact_email"))
        batch_op.create_index(batch_op.f("ix_approvedcontact_email"), ["email"], unique=1)
        batch_op.drop_column("scope")
