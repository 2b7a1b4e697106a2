"""batch jobs

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06

A node may run its subtasks on a batch system (``executor: slurm``): each task attempt is
one job array, followed by the reconciler from the controller's answers, with its cost
estimated before and measured after.
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batch_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("system", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("subtasks", sa.Integer(), nullable=False),
        sa.Column("elements", sa.Integer(), nullable=False),
        sa.Column("partition", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("seen", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("estimated_node_hours", sa.Float(), nullable=True),
        sa.Column("estimated_cost", sa.Float(), nullable=True),
        sa.Column("node_hours", sa.Float(), nullable=True),
        sa.Column("cost", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token"),
    )
    with op.batch_alter_table("batch_jobs") as table:
        table.create_index("ix_batch_jobs_task_id", ["task_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("batch_jobs") as table:
        table.drop_index("ix_batch_jobs_task_id")
    op.drop_table("batch_jobs")
