"""alert episodes

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

An alert about a condition (a disk filling up, say) names its cause: it is raised once
while the condition lasts, and cleared when it ends.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alerts") as table:
        table.add_column(
            sa.Column("cause", sa.String(length=300), nullable=False, server_default="")
        )
        table.add_column(sa.Column("cleared_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("alerts") as table:
        table.drop_column("cleared_at")
        table.drop_column("cause")
