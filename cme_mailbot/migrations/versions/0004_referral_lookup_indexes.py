"""Indexes for rule 9's lookup of an open referral (by UPN, or by name and date of birth).

Without them every form scanned the whole referral table, a cost that grew with every referral
ever accepted. Adding an index changes no data: safe to apply on start-up.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 19:58:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("referral", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_referral_child_dob"), ["child_dob"], unique=False)
        batch_op.create_index(batch_op.f("ix_referral_upn"), ["upn"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("referral", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_referral_upn"))
        batch_op.drop_index(batch_op.f("ix_referral_child_dob"))
