"""TPM attestation keys: enrolled AKs, enrolments under way, the latest clock per AK.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tpm_aks",
        sa.Column("name", sa.String(132), primary_key=True),
        sa.Column("public", sa.LargeBinary, nullable=False),
        sa.Column("ek_public", sa.LargeBinary, nullable=False),
        sa.Column("ek_certificate", sa.LargeBinary, nullable=False),
        sa.Column("ek_issuer", sa.String(512), nullable=False),
        sa.Column("ek_root", sa.String(16), nullable=False),
        sa.Column("ek_root_sha256", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("label", sa.String(128), nullable=True),
        sa.Column("enrolled_by", sa.String(256), nullable=False),
        sa.Column("enrolled_at", _TS, nullable=False),
        sa.Column("approved_by", sa.String(256), nullable=True),
        sa.Column("approved_at", _TS, nullable=True),
        sa.Column("revoked_by", sa.String(256), nullable=True),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.Column("revoke_reason", sa.String(512), nullable=True),
    )
    op.create_table(
        "tpm_enrolments",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("ak_name", sa.String(132), nullable=False),
        sa.Column("ak_public", sa.LargeBinary, nullable=False),
        sa.Column("ek_public", sa.LargeBinary, nullable=False),
        sa.Column("ek_certificate", sa.LargeBinary, nullable=False),
        sa.Column("ek_issuer", sa.String(512), nullable=False),
        sa.Column("ek_root", sa.String(16), nullable=False),
        sa.Column("ek_root_sha256", sa.String(64), nullable=False),
        sa.Column("label", sa.String(128), nullable=True),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
    )
    op.create_index("ix_tpm_enrolments_expires_at", "tpm_enrolments", ["expires_at"])
    op.create_table(
        "tpm_ak_clocks",
        sa.Column("ak", sa.String(64), primary_key=True),
        sa.Column("clock", sa.BigInteger, nullable=False),
        sa.Column("reset_count", sa.BigInteger, nullable=False),
        sa.Column("restart_count", sa.BigInteger, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tpm_ak_clocks")
    op.drop_index("ix_tpm_enrolments_expires_at", table_name="tpm_enrolments")
    op.drop_table("tpm_enrolments")
    op.drop_table("tpm_aks")
