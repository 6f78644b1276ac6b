"""What every replica shares, sealed under the root key: the two service CAs' private keys (their
certificates beside them, in clear) and the bearer token signing key, so that a replica joins with
an empty data dir. Rows are written by a replica once it is unsealed (``keybroker.seal.shared``);
data dirs from before keep their files, which are adopted into this table at their first unsealed
start.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"


def upgrade() -> None:
    op.create_table(
        "shared_secrets",
        sa.Column("name", sa.String(96), primary_key=True),
        sa.Column("public", sa.Text, nullable=False),
        sa.Column("sealed", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("shared_secrets")
