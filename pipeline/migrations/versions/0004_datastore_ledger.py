"""datastore ledger

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

Every stored version of a datastore file gets a row naming its producer, and every
subtask's inputs are recorded, so that a result can be traced and inputs chosen from what
this instance produced rather than whatever the datastore holds. Subtasks record how many
output files they left.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datastore_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=1000), nullable=False),
        sa.Column("data_file_type", sa.String(length=200), nullable=False),
        sa.Column("unit_of_work", sa.String(length=500), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("receipt", sa.Text(), nullable=False),
        sa.Column("instance_id", sa.Integer(), nullable=True),
        sa.Column("task_id", sa.Integer(), nullable=True),
        sa.Column("subtask_index", sa.Integer(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("node", sa.String(length=200), nullable=False),
        sa.Column("definition_version", sa.Integer(), nullable=True),
        sa.Column("parameter_versions", sa.JSON(), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("superseded_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["instance_id"], ["pipeline_instances.id"]),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_datastore_files_path", "datastore_files", ["path", "superseded_at"])
    op.create_index(
        "ix_datastore_files_instance",
        "datastore_files",
        ["instance_id", "unit_of_work", "data_file_type"],
    )
    op.create_index("ix_datastore_files_task_id", "datastore_files", ["task_id"])
    op.create_table(
        "file_consumptions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("subtask_index", sa.Integer(), nullable=False),
        sa.Column("file_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"]),
        sa.ForeignKeyConstraint(["file_id"], ["datastore_files.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_file_consumptions_task", "file_consumptions", ["task_id", "attempt", "subtask_index"]
    )
    op.create_index("ix_file_consumptions_file_id", "file_consumptions", ["file_id"])
    with op.batch_alter_table("subtasks") as table:
        table.add_column(sa.Column("outputs", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("subtasks") as table:
        table.drop_column("outputs")
    op.drop_table("file_consumptions")
    op.drop_table("datastore_files")
