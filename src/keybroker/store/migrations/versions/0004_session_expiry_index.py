"""/kbs/v0 sessions: an index on expires_at, for the housekeeping that drops expired sessions.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.create_index("ix_kbs_sessions_expires_at", "kbs_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_kbs_sessions_expires_at", table_name="kbs_sessions")
