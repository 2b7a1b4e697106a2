"""Parameter libraries as Ziggy keeps them: XML files of ``parameterSet`` elements,
imported (``pipeline params import``) and exported (``pipeline params export``).

A set marked ``partial="true"`` overrides only the values it names, of a set that must
exist, each of its declared type; a whole set creates the set, or replaces its values.
Import is all or nothing, and says first what it would do: each set ``created``,
``updated`` (with the values that change) or ``unchanged``; a locked version (one an
instance used) gets a new version, as ``params set`` does.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from pipeline.database import transaction
from pipeline.domain import parameters, ziggy
from pipeline.domain.models import ParameterSet
from pipeline.errors import InvalidInput
from pipeline.operations.views import ParameterSetChange


def import_library(path: Path, apply: bool) -> list[ParameterSetChange]:
    """What importing the library at ``path`` does to each set (see the module
    docstring), done only with ``apply``."""
    library = ziggy.read_parameter_library(path)
    with transaction() as session:
        plan = [_import_set(session, path, given) for given in library]
        if not apply:
            session.rollback()
    return plan


def _import_set(session: Session, path: Path, given: ziggy.ParameterSetXml) -> ParameterSetChange:
    current = parameters.latest(session, given.name)
    where = f"{path}: parameterSet {given.name!r}"
    if current is None:
        if given.partial:
            raise InvalidInput(f"{where}: partial, and no such set exists to override")
        session.add(ParameterSet(name=given.name, version=1, values=given.values))
        session.flush()
        changes = parameters.flat_values(given.values)
        return ParameterSetChange(name=given.name, action="created", changes=changes)
    if not given.partial and set(given.values) != set(current.values):
        values = given.values
    else:
        values = {key: dict(decl) for key, decl in current.values.items()}
        for key, decl in given.values.items():
            if key not in values:
                known = ", ".join(sorted(values))
                raise InvalidInput(f"{where}: no parameter {key!r} to override (has: {known})")
            if values[key]["type"] != decl["type"]:
                raise InvalidInput(
                    f"{where}: parameter {key!r} is {values[key]['type']}, the file says"
                    f" {decl['type']}"
                )
            values[key]["value"] = decl["value"]
    changes = {
        key: decl["value"] for key, decl in values.items() if current.values.get(key) != decl
    }
    if not changes and set(values) == set(current.values):
        return ParameterSetChange(name=given.name, action="unchanged", changes={})
    if current.locked:
        session.add(ParameterSet(name=given.name, version=current.version + 1, values=values))
    else:
        current.values = values
    session.flush()
    return ParameterSetChange(name=given.name, action="updated", changes=changes)


def export_library(names: list[str]) -> str:
    """The newest version of each named set (every set, none named) as a Ziggy parameter
    library file."""
    with transaction() as session:
        sets = (
            [parameters.get(session, name) for name in names]
            if names
            else parameters.list_latest(session)
        )
        lines = ["<?xml version='1.0' encoding='UTF-8'?>", "<pipelineDefinition>"]
        for found in sets:
            lines.append(f"  <parameterSet{ziggy.xml_attributes({'name': found.name})}>")
            lines += [f"    {ziggy.parameter_xml(k, d)}" for k, d in found.values.items()]
            lines.append("  </parameterSet>")
    return "\n".join([*lines, "</pipelineDefinition>"]) + "\n"
