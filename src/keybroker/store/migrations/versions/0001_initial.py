"""Initial schema: seal, policies, keys, key material, certificates, audit chain.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

_TS = sa.DateTime(timezone=True)
_SEQ = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "seal_config",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("seal_type", sa.String(32), nullable=False),
        sa.Column("shares", sa.Integer, nullable=False),
        sa.Column("threshold", sa.Integer, nullable=False),
        sa.Column("encrypted_root_key", sa.LargeBinary, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "transfer_policies",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_table(
        "keys",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("algorithm", sa.String(8), nullable=False),
        sa.Column("key_length", sa.Integer, nullable=True),
        sa.Column("curve_type", sa.String(16), nullable=True),
        sa.Column("label", sa.String(256), nullable=True),
        sa.Column("usage", sa.String(256), nullable=True),
        sa.Column("transfer_policy_id", sa.String(36), sa.ForeignKey("transfer_policies.id"), nullable=True),
        sa.Column("public_key_pem", sa.Text, nullable=True),
        sa.Column("keystore", sa.String(16), nullable=False),
        sa.Column("backend_ref", sa.String(512), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_index("ix_keys_transfer_policy_id", "keys", ["transfer_policy_id"])
    op.create_table(
        "key_material",
        sa.Column("key_id", sa.String(36), sa.ForeignKey("keys.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("wrapped_dek", sa.LargeBinary, nullable=False),
        sa.Column("ciphertext", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "certificates",
        sa.Column("key_id", sa.String(36), sa.ForeignKey("keys.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("pem", sa.Text, nullable=False),
        sa.Column("serial", sa.String(64), nullable=False),
        sa.Column("not_after", _TS, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "audit_log",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=False),
        sa.Column("time", _TS, nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("object_id", sa.String(256), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("details", sa.JSON, nullable=True),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("seq", _SEQ, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.bulk_insert(
        sa.table("audit_head", sa.column("id"), sa.column("seq"), sa.column("hash")),
        [{"id": 1, "seq": 0, "hash": "0" * 64}],
    )


def downgrade() -> None:
    for table in (
        "audit_head",
        "audit_log",
        "certificates",
        "key_material",
        "keys",
        "transfer_policies",
        "seal_config",
    ):
        op.drop_table(table)
