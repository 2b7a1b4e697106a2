"""placing versions

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

A store records its new versions as being placed before it links them at their paths,
and makes them current only once every one is placed: at every instant each path shows
its current version or one being placed, and a store that died halfway is finished by its
next try or withdrawn by the reconciler.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datastore_files") as table:
        table.add_column(
            sa.Column("placing", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_index(
        "ix_datastore_files_placing", "datastore_files", ["placing", "task_id", "attempt"]
    )


def downgrade() -> None:
    op.drop_index("ix_datastore_files_placing", table_name="datastore_files")
    with op.batch_alter_table("datastore_files") as table:
        table.drop_column("placing")
