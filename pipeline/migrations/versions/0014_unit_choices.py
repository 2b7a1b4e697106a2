"""units chosen per submission

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08

``pipeline submit --units REGEX --exclude REGEX``: the regular expressions an instance's
units of work must match (and must not), frozen with it and applied to every node's units
as its tasks are created.
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pipeline_instances") as table:
        table.add_column(sa.Column("units_regexp", sa.Text(), nullable=True))
        table.add_column(sa.Column("units_exclude", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pipeline_instances") as table:
        table.drop_column("units_exclude")
        table.drop_column("units_regexp")
