"""a path's versions found by their checksum

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06

A ``reprocess: new`` node asks, for each file it might consume, whether it consumed that
path with that checksum before. With an index on the path alone, a path of a hundred
versions read a hundred rows for each file; with the checksum beside the path, one. The
index still finds a path's current version (``superseded_at``, its last column).
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_datastore_files_path", table_name="datastore_files")
    op.create_index(
        "ix_datastore_files_path", "datastore_files", ["path", "sha256", "superseded_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_datastore_files_path", table_name="datastore_files")
    op.create_index("ix_datastore_files_path", "datastore_files", ["path", "superseded_at"])
