"""The appraisal inputs of recent attempts, for testing a policy on them (the console).

Revision ID: 0012
Revises: 0011 (0011_shared_secrets)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"  # 0011_shared_secrets


def upgrade() -> None:
    op.create_table(
        "appraisal_inputs",
        sa.Column(
            "audit_seq",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("tee", sa.String(32), nullable=False),
        sa.Column("document", sa.JSON, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("appraisal_inputs")
