"""pruned versions

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

Retention removes the bytes of old versions (``pipeline datastore prune``); their ledger
rows stay, marked with when, so lineage still answers for them.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datastore_files") as table:
        table.add_column(sa.Column("pruned_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("datastore_files") as table:
        table.drop_column("pruned_at")
