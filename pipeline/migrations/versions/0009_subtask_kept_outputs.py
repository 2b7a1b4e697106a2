"""subtask kept outputs

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

A subtask that succeeded keeps its outputs' bytes in the object store as it ends, in
parallel with the others, and records what it kept: the store then places and records
them without hashing a file.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subtasks") as table:
        table.add_column(sa.Column("kept", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("subtasks") as table:
        table.drop_column("kept")
