"""Alembic environment: migrates the database named by the pipeline's settings."""

from alembic import context

from pipeline.database import get_engine
from pipeline.domain.models import Base

engine = context.config.attributes.get("engine") or get_engine()

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
