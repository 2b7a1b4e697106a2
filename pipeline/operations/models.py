"""The model registry as operators use it: a model file received as a version of its type
(``import_model``: ``pipeline models import FILE --type TYPE``), and the versions held
(``list_models``: ``pipeline models``). Models also arrive in a delivery's ``models/``
directory (``operations.delivery``)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.database import transaction
from pipeline.domain.definitions import ModelType
from pipeline.domain.models import Model
from pipeline.engine import datastore, model_registry
from pipeline.errors import named_file
from pipeline.operations.receipt import agreed
from pipeline.operations.views import ModelReceipt, ModelView, model_view
from pipeline.settings import get_settings


def model_type(session: Session, name: str, pipeline: str | None = None) -> ModelType:
    """The model type called ``name`` in the newest definitions (they must agree on it)."""
    return agreed(session, "model type", name, pipeline, lambda d: d.model_types)


def import_model(file: Path, kind: str, pipeline: str | None = None) -> ModelReceipt:
    """Receive ``file`` as a version of model type ``kind``: kept forever, by its bytes."""
    named_file(file)
    root = datastore.require(get_settings().datastore)
    with transaction() as session:
        model, new = model_registry.receive(
            session, root, file, kind, model_type(session, kind, pipeline), str(file.resolve())
        )
        return ModelReceipt(model=model_view(model), new=new)


def list_models(kind: str | None = None) -> list[ModelView]:
    """Every version held, by type, oldest first (the newest of each type last)."""
    with transaction() as session:
        kinds = (
            [kind]
            if kind
            else list(
                session.scalars(select(Model.model_type).distinct().order_by(Model.model_type))
            )
        )
        return [model_view(m) for k in kinds for m in model_registry.versions(session, k)]
