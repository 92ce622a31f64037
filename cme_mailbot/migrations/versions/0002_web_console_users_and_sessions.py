"""The web console's tables: users, sign-in attempts (for throttling) and sessions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 23:00:21.336760
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "web_sign_in_attempt",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("client_ip", sa.String(length=64), nullable=False),
        sa.Column("success", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_web_sign_in_attempt_at"), "web_sign_in_attempt", ["at"], unique=False)
    op.create_index(
        op.f("ix_web_sign_in_attempt_client_ip"), "web_sign_in_attempt", ["client_ip"], unique=False
    )
    op.create_index(
        op.f("ix_web_sign_in_attempt_username"), "web_sign_in_attempt", ["username"], unique=False
    )

    op.create_table(
        "web_user",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("role", sa.Enum("ADMINISTRATOR", "OFFICER", name="role"), nullable=False),
        sa.Column("password_hash", sa.String(), nullable=False),
        sa.Column("failed_attempts", sa.Integer(), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_sign_in_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_web_user_username"), "web_user", ["username"], unique=True)

    op.create_table(
        "web_session",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("client_ip", sa.String(length=64), nullable=False),
        sa.Column("flash", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["web_user.id"], name="fk_web_session_user_id_web_user"
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_web_session_user_id"), "web_session", ["user_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_web_session_user_id"), table_name="web_session")

    op.drop_table("web_session")
    op.drop_index(op.f("ix_web_user_username"), table_name="web_user")

    op.drop_table("web_user")
    op.drop_index(op.f("ix_web_sign_in_attempt_username"), table_name="web_sign_in_attempt")
    op.drop_index(op.f("ix_web_sign_in_attempt_client_ip"), table_name="web_sign_in_attempt")
    op.drop_index(op.f("ix_web_sign_in_attempt_at"), table_name="web_sign_in_attempt")

    op.drop_table("web_sign_in_attempt")
    sa.Enum(name="role").drop(op.get_bind(), checkfirst=True)  # PostgreSQL's enum type
