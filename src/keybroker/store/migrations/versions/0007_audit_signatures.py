"""Audit records signed under the seal: ``audit_log.sig``, and ``audit_head.signed_from``.

Records already in the log carry no signature: ``signed_from`` is set to the first record written
after this upgrade (1 on a new database), and the checkpoints repeat it from then on.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"

_SEQ = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.add_column("audit_log", sa.Column("sig", sa.String(128), nullable=True))
    op.add_column("audit_head", sa.Column("signed_from", _SEQ, nullable=False, server_default="1"))
    op.execute("UPDATE audit_head SET signed_from = seq + 1")


def downgrade() -> None:
    with op.batch_alter_table("audit_head") as batch:
        batch.drop_column("signed_from")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("sig")
