"""The model registry (Ziggy's): versioned files such as calibrations, each kept forever
in the datastore's object store by its SHA-256 and recorded with its version, timestamp
and receipt. An instance pins, at submit, the version of every model type its nodes use
(``pin``), frozen like its parameters; a subtask is given its node's pinned models under
their original names (``given``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline.domain.definitions import Definition, ModelType, Node
from pipeline.domain.models import Model, PipelineInstance
from pipeline.engine import datastore
from pipeline.errors import InvalidInput, NotFound, shown

#: A model's pin as an instance keeps it: what the algorithm is given, by its bytes.
Pin = dict[str, Any]


def pin_of(model: Model) -> Pin:
    return {
        "version": model.version,
        "name": model.name,
        "sha256": model.sha256,
        "size": model.size,
    }


def version_key(model: Model) -> tuple[Any, ...]:
    """Newest last: by timestamp, then version (numbers as numbers), then receipt."""
    parts = tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in re.split(r"(\d+)", model.version)
        if part
    )
    return (model.timestamp, parts, model.id)


def versions(session: Session, model_type: str) -> list[Model]:
    """Every version of a model type, oldest first (``version_key``)."""
    found = session.scalars(select(Model).where(Model.model_type == model_type))
    return sorted(found, key=version_key)


def pin(
    session: Session,
    definition: Definition,
    nodes: Iterable[str],
    chosen: Mapping[str, str],
    receiving: bool = False,
) -> dict[str, Pin]:
    """The versions an instance running ``nodes`` uses: for each model type they name, the
    version ``chosen`` gives (its pin says so: ``chosen``), else the newest. Refused,
    naming it, when a chosen type is not used or a version was never received; an
    instance ``receiving`` (it runs a data receipt node) leaves a type of which none was
    received unpinned: its delivery may bring one, and its pins are taken again once it
    is in (Ziggy's rule), the versions chosen at submit standing (``chosen_by``)."""
    used = sorted({kind for name in nodes for kind in definition.node(name).models})
    for kind in chosen:
        if kind not in used:
            said = ", ".join(used) or "none"
            raise NotFound(
                f"--model {shown(kind)}: no node this instance runs uses that model type"
                f" (they use: {said})"
            )
    pins: dict[str, Pin] = {}
    for kind in used:
        known = versions(session, kind)
        if not known and receiving and kind not in chosen:
            continue
        if not known:
            users = sorted(n for n in nodes if kind in definition.node(n).models)
            raise InvalidInput(
                f"node {users[0]!r} uses model type {kind!r}, and no version of it was "
                f"received (pipeline models import FILE --type {kind})"
            )
        if kind in chosen:
            named = [m for m in known if m.version == chosen[kind]]
            if not named:
                listed = ", ".join(m.version for m in known[-5:])
                raise NotFound(
                    f"model type {kind!r} has no version {shown(chosen[kind])} (newest: {listed})"
                )
            pins[kind] = pin_of(named[0]) | {"chosen": True}
        else:
            pins[kind] = pin_of(known[-1])
    return pins


def chosen_by(instance: PipelineInstance) -> dict[str, str]:
    """The versions ``instance``'s submit chose (``--model TYPE=VERSION``), by type."""
    pinned = instance.models or {}
    return {kind: pin["version"] for kind, pin in pinned.items() if pin.get("chosen")}


def node_pins(instance: PipelineInstance, node: Node) -> dict[str, Pin]:
    """The pinned versions of the model types ``node`` uses."""
    pinned = instance.models or {}
    return {kind: pinned[kind] for kind in node.models if kind in pinned}


def given(root: Path, pins: Mapping[str, Pin]) -> list[tuple[Path, str]]:
    """Each pinned model's bytes (its object) and the name the algorithm sees."""
    return [(datastore.object_path(root, p["sha256"]), p["name"]) for p in pins.values()]


def receive(
    session: Session, root: Path, file: Path, kind: str, model_type: ModelType, receipt: str
) -> tuple[Model, bool]:
    """Keep ``file`` as a version of model type ``kind``; the row and whether it is new.

    Its version comes from the name (``ModelType.pattern``), else the next number; the
    same bytes received again as the same version are the same model, other bytes under
    a version already received are refused."""
    match = model_type.match(file.name)
    if match is None:
        raise InvalidInput(
            f"{file.name}: does not match model type {kind!r}'s pattern {model_type.pattern!r}"
        )
    groups = match.groupdict()
    kept = datastore.keep(root, file, link=False)
    known = versions(session, kind)
    same = [m for m in known if m.sha256 == kept.sha256 and m.name == file.name]
    version = groups.get("version")
    if version is None:
        if same:
            return same[-1], False
        numbered = session.scalar(
            select(func.count()).select_from(Model).where(Model.model_type == kind)
        )
        version = str((numbered or 0) + 1)
    existing = next((m for m in known if m.version == version), None)
    if existing is not None:
        if existing.sha256 == kept.sha256:
            return existing, False
        raise InvalidInput(
            f"{file.name}: model type {kind!r} version {version!r} was received already,"
            f" with other bytes ({existing.sha256[:12]}): a version is never replaced"
        )
    model = Model(
        model_type=kind,
        version=version,
        timestamp=groups.get("timestamp") or "",
        name=file.name,
        sha256=kept.sha256,
        size=kept.size,
        receipt=receipt,
    )
    try:
        with session.begin_nested():
            session.add(model)
            session.flush()
    except IntegrityError:
        raise InvalidInput(
            f"{file.name}: model type {kind!r} version {version!r} is being received by"
            " another receipt: try again"
        ) from None
    return model, True


def model_type_of(definitions: Iterable[Definition], file_name: str) -> str | None:
    """The model type whose pattern ``file_name`` matches in these definitions (None)."""
    for definition in definitions:
        for kind, model_type in definition.model_types.items():
            if model_type.match(file_name):
                return kind
    return None
