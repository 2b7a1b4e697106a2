"""stale tasks

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

A task whose inputs were stored again with other bytes after it consumed them is stale
(with why), and may be waiting to run again once its inputs are current (``rerun``, set
by ``pipeline restart --downstream``).
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as table:
        table.add_column(
            sa.Column("stale", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        table.add_column(sa.Column("stale_reason", sa.Text(), nullable=False, server_default=""))
        table.add_column(
            sa.Column("rerun", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("tasks") as table:
        table.drop_column("rerun")
        table.drop_column("stale_reason")
        table.drop_column("stale")
