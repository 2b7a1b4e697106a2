"""models, events and the code of every attempt

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

The model registry (versioned files kept forever; an instance pins the versions it uses),
event handlers and the events they saw (an instance records the one that started it, and
the units it runs for), and each task attempt's record of the code and models that ran it.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_type", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=200), nullable=False),
        sa.Column("timestamp", sa.String(length=64), nullable=False, server_default=""),
        sa.Column("name", sa.String(length=500), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("receipt", sa.Text(), nullable=False, server_default=""),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model_type", "version"),
    )
    op.create_table(
        "event_handlers",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("pipeline", sa.String(length=200), nullable=False),
        sa.Column("directory", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "pipeline_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("handler", sa.String(length=200), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("deliveries", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False, server_default=""),
        sa.Column("instance_id", sa.Integer(), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("handler", "key"),
    )
    op.create_table(
        "task_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("code", sa.JSON(), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("task_id", "attempt"),
    )
    with op.batch_alter_table("pipeline_instances") as table:
        table.add_column(sa.Column("models", sa.JSON(), nullable=True))
        table.add_column(sa.Column("units", sa.JSON(), nullable=True))
        table.add_column(sa.Column("event", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pipeline_instances") as table:
        table.drop_column("event")
        table.drop_column("units")
        table.drop_column("models")
    op.drop_table("task_attempts")
    op.drop_table("pipeline_events")
    op.drop_table("event_handlers")
    op.drop_table("models")
