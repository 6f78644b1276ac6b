"""The KDS cache: AMD SEV-SNP VCEKs, ASK/ASVK chains and ARK CRLs with history.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "snp_collateral_items",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("signing_key", sa.String(4), nullable=False),
        sa.Column("product", sa.String(8), nullable=False),
        sa.Column("hwid", sa.String(128), nullable=True),
        sa.Column("tcb", sa.String(16), nullable=True),
        sa.Column("content", sa.LargeBinary, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("valid_from", _TS, nullable=False),
        sa.Column("valid_until", _TS, nullable=False),
        sa.Column("ark_spki_sha256", sa.String(64), nullable=False),
        sa.Column("root_kind", sa.String(8), nullable=False),
        sa.Column("intermediate_sha256", sa.String(64), nullable=True),
        sa.Column("source", sa.String(512), nullable=False),
        sa.Column("imported_at", _TS, nullable=False),
    )
    # The lookups: a chip's VCEK at a TCB; the newest chain or CRL of a product and side.
    op.create_index(
        "ix_snp_collateral_items_lookup",
        "snp_collateral_items",
        ["kind", "product", "signing_key", "hwid", "tcb", "valid_from"],
    )
    # A version 2 report does not name its product: its VCEK is found by chip and TCB alone.
    op.create_index("ix_snp_collateral_items_chip", "snp_collateral_items", ["hwid", "tcb"])


def downgrade() -> None:
    op.drop_index("ix_snp_collateral_items_chip", table_name="snp_collateral_items")
    op.drop_index("ix_snp_collateral_items_lookup", table_name="snp_collateral_items")
    op.drop_table("snp_collateral_items")
