"""Integrity tags on the rows that decide a release (``keybroker.seal.integrity``): transfer
policies, keys, ``/kbs/v0`` resources and TPM AKs (approved ones). Existing rows get none: they are adopted by an
administrator (``keybroker operator integrity --adopt``) and never released on before.

Revision ID: 0013
Revises: 0012 (0012_appraisal_inputs)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"  # 0012_appraisal_inputs

TABLES = ("transfer_policies", "keys", "kbs_resources", "tpm_aks")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("integrity_tag", sa.String(64), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("integrity_tag")
