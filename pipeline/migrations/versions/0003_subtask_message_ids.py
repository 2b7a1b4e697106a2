"""subtask message ids

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

Each queued or running subtask records the id of the Celery message that carries it: one
message may carry a batch of subtasks, so halt (which revokes it) and the in-flight scan
(which looks for it) read the id instead of deriving it from the subtask alone.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subtasks") as table:
        table.add_column(
            sa.Column("message_id", sa.String(length=200), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("subtasks") as table:
        table.drop_column("message_id")
