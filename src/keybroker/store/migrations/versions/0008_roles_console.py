"""Roles and the web console: custom roles, the roles a bearer token names, console sessions.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "roles",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("permissions", sa.JSON, nullable=False),
        sa.Column("description", sa.String(256), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
    )
    op.add_column(
        "bearer_tokens", sa.Column("roles", sa.JSON, nullable=False, server_default=sa.text("'[]'"))
    )
    op.create_table(
        "console_sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(256), nullable=True),
        sa.Column("email", sa.String(256), nullable=True),
        sa.Column("name", sa.String(256), nullable=True),
        sa.Column("roles", sa.JSON, nullable=False),
        sa.Column("oidc_state", sa.String(128), nullable=True),
        sa.Column("oidc_nonce", sa.String(128), nullable=True),
        sa.Column("oidc_verifier", sa.String(128), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("last_seen_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
    )
    op.create_index("ix_console_sessions_expires_at", "console_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_console_sessions_expires_at", table_name="console_sessions")
    op.drop_table("console_sessions")
    with op.batch_alter_table("bearer_tokens") as batch:
        batch.drop_column("roles")
    op.drop_table("roles")
