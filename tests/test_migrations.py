"""The Alembic migrations build exactly the schema the models describe: a column added to a
model without its migration (or the reverse) fails here, not on an operator's upgrade."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from pipeline.domain.models import Base


def test_the_migrated_schema_matches_the_models(database: Path) -> None:
    from pipeline.settings import get_settings

    engine = create_engine(get_settings().db_url)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert differences == []
