"""Key release: nonces, /kbs/v0 sessions, resources, attestation-token signing keys.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "nonces",
        # SHA-256 of the nonce bytes: the nonce itself is not stored
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(256), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("used_at", _TS, nullable=True),
    )
    op.create_index("ix_nonces_expires_at", "nonces", ["expires_at"])
    op.create_table(
        "kbs_sessions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("nonce", sa.String(64), nullable=False),
        sa.Column("tee", sa.String(32), nullable=False),
        sa.Column("hash_alg", sa.String(16), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("attested_at", _TS, nullable=True),
        sa.Column("token_jti", sa.String(64), nullable=True),
        sa.Column("ear_token", sa.Text, nullable=True),
        sa.Column("tee_pubkey", sa.JSON, nullable=True),
    )
    op.create_table(
        "kbs_resources",
        sa.Column("path", sa.String(512), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("key_id", sa.String(36), sa.ForeignKey("keys.id", ondelete="CASCADE"), nullable=True),
        sa.Column("wrapped_dek", sa.LargeBinary, nullable=True),
        sa.Column("ciphertext", sa.LargeBinary, nullable=True),
        sa.Column("policy", sa.JSON, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(64), primary_key=True),
        sa.Column("alg", sa.String(16), nullable=False),
        sa.Column("public_jwk", sa.JSON, nullable=False),
        sa.Column("sealed_private", sa.LargeBinary, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("retired_at", _TS, nullable=True),
    )


def downgrade() -> None:
    for table in ("signing_keys", "kbs_resources", "kbs_sessions", "nonces"):
        op.drop_table(table)
