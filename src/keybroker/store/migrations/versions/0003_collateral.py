"""Collateral caching service: DCAP collateral items (TCB Info, QE/QVE identities, CRLs) with history.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "collateral_items",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("tee", sa.String(8), nullable=True),
        sa.Column("fmspc", sa.String(12), nullable=True),
        sa.Column("pck_ca", sa.String(16), nullable=True),
        sa.Column("pce_id", sa.String(4), nullable=True),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("signed_text", sa.Text, nullable=True),
        sa.Column("signature", sa.LargeBinary, nullable=True),
        sa.Column("crl_der", sa.LargeBinary, nullable=True),
        sa.Column("issuer_chain", sa.Text, nullable=True),
        sa.Column("issue_date", _TS, nullable=False),
        sa.Column("next_update", _TS, nullable=False),
        sa.Column("tcb_evaluation_data_number", sa.BigInteger, nullable=True),
        sa.Column("root_sha256", sa.String(64), nullable=False),
        sa.Column("root_kind", sa.String(8), nullable=False),
        sa.Column("source", sa.String(512), nullable=False),
        sa.Column("imported_at", _TS, nullable=False),
    )
    # The lookups: newest TCB Info of (tee, fmspc); newest QE identity of tee; newest PCK CRL of a CA.
    op.create_index(
        "ix_collateral_items_lookup", "collateral_items", ["kind", "tee", "fmspc", "pck_ca", "issue_date"]
    )


def downgrade() -> None:
    op.drop_index("ix_collateral_items_lookup", table_name="collateral_items")
    op.drop_table("collateral_items")
