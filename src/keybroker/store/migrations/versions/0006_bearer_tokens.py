"""Bearer tokens on record: the keys that sign them (public halves) and every token issued, for
listing and revocation.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "bearer_token_keys",
        sa.Column("kid", sa.String(64), primary_key=True),
        sa.Column("public_jwk", sa.JSON, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("retired_at", _TS, nullable=True),
    )
    op.create_table(
        "bearer_tokens",
        sa.Column("jti", sa.String(36), primary_key=True),
        sa.Column("kid", sa.String(64), sa.ForeignKey("bearer_token_keys.kid"), nullable=False),
        sa.Column("subject", sa.String(128), nullable=False),
        sa.Column("permissions", sa.JSON, nullable=False),
        sa.Column("client_permissions", sa.JSON, nullable=False),
        sa.Column("issued_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("issued_by", sa.String(256), nullable=False),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.Column("revoked_by", sa.String(256), nullable=True),
        sa.Column("revoke_reason", sa.String(256), nullable=True),
    )
    op.create_index("ix_bearer_tokens_expires_at", "bearer_tokens", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_bearer_tokens_expires_at", table_name="bearer_tokens")
    op.drop_table("bearer_tokens")
    op.drop_table("bearer_token_keys")
