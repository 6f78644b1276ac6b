"""Outstanding challenges: partial indexes that count the unused, unexpired nonces of a purpose and
the unattested /kbs/v0 sessions as a range scan bounded by the caps (``keybroker.limits``).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    unused = sa.text("used_at IS NULL")
    op.create_index(
        "ix_nonces_outstanding",
        "nonces",
        ["purpose", "expires_at"],
        sqlite_where=unused,
        postgresql_where=unused,
    )
    unattested = sa.text("attested_at IS NULL")
    op.create_index(
        "ix_kbs_sessions_outstanding",
        "kbs_sessions",
        ["expires_at"],
        sqlite_where=unattested,
        postgresql_where=unattested,
    )


def downgrade() -> None:
    op.drop_index("ix_kbs_sessions_outstanding", table_name="kbs_sessions")
    op.drop_index("ix_nonces_outstanding", table_name="nonces")
