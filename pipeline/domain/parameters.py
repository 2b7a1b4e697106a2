"""Parameter sets: named, typed values, versioned, locked once an instance used them."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pipeline.domain.models import ParameterSet
from pipeline.errors import InvalidInput, NotFound

#: Parameter types an operator can declare; ``[]`` marks an array of that type.
SCALAR_TYPES = ("bool", "int", "float", "str")
TYPES = SCALAR_TYPES + tuple(f"{t}[]" for t in SCALAR_TYPES)
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def infer_type(value: Any) -> str:
    """The declared type of a default value written in a definition file."""
    if isinstance(value, list):
        if not value:
            raise InvalidInput(
                "an empty array needs an explicit type, e.g. {type: int[], value: []}"
            )
        return f"{infer_type(value[0])}[]"
    for name, python_type in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if isinstance(value, python_type):
            return name
    raise InvalidInput(f"unsupported value {value!r} (use bool, int, float, str or an array)")


def coerce(kind: str, value: Any) -> Any:
    """``value`` (a native value or the text an operator typed) as type ``kind``."""
    if kind.endswith("[]"):
        return _coerce_array(kind[:-2], value)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise InvalidInput(f"{value!r} is not a bool (use true or false)")
    if kind == "str":
        return str(value)
    try:
        if isinstance(value, bool) or (kind == "int" and isinstance(value, float)):
            raise ValueError
        return int(value) if kind == "int" else float(value)
    except (TypeError, ValueError):
        article = "an" if kind == "int" else "a"
        raise InvalidInput(f"{value!r} is not {article} {kind}") from None


def _coerce_array(kind: str, value: Any) -> list[Any]:
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text) if text.startswith("[") else [v for v in text.split(",") if v]
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{value!r} is not an array of {kind}: {exc.msg}") from exc
    if not isinstance(value, list):
        raise InvalidInput(f"{value!r} is not an array of {kind}")
    return [coerce(kind, item) for item in value]


def normalize_declaration(raw: Any) -> dict[str, Any]:
    """``{type, value}`` from a definition file's ``key: value`` or ``key: {type, value}``."""
    if isinstance(raw, dict) and set(raw) == {"type", "value"}:
        kind = raw["type"]
        if kind not in TYPES:
            raise InvalidInput(f"unknown type {kind!r} (one of {', '.join(TYPES)})")
        return {"type": kind, "value": coerce(kind, raw["value"])}
    kind = infer_type(raw)
    return {"type": kind, "value": raw}


def latest(session: Session, name: str) -> ParameterSet | None:
    return session.scalars(
        select(ParameterSet).where(ParameterSet.name == name).order_by(ParameterSet.version.desc())
    ).first()


def get(session: Session, name: str, version: int | None = None) -> ParameterSet:
    if version is None:
        found = latest(session, name)
    else:
        found = session.scalars(
            select(ParameterSet).where(ParameterSet.name == name, ParameterSet.version == version)
        ).first()
    if found is None:
        label = name if version is None else f"{name} version {version}"
        raise NotFound(f"unknown parameter set {label!r}")
    return found


def list_latest(session: Session) -> list[ParameterSet]:
    newest = (
        select(ParameterSet.name, func.max(ParameterSet.version).label("version"))
        .group_by(ParameterSet.name)
        .subquery()
    )
    return list(
        session.scalars(
            select(ParameterSet)
            .join(
                newest,
                (ParameterSet.name == newest.c.name) & (ParameterSet.version == newest.c.version),
            )
            .order_by(ParameterSet.name)
        )
    )


def parse_assignments(assignments: list[str]) -> dict[str, str]:
    """``["key=value", ...]`` as a dict; a malformed item names itself."""
    parsed: dict[str, str] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"{item!r} is not key=value")
        parsed[key.strip()] = value
    return parsed


def set_values(session: Session, name: str, changes: dict[str, Any]) -> ParameterSet:
    """Apply ``changes`` to the set: in place while unlocked, else as a new version.

    Every key and value is checked before anything changes.
    """
    current = get(session, name)
    values = {key: dict(decl) for key, decl in current.values.items()}
    for key, raw in changes.items():
        if key not in values:
            known = ", ".join(sorted(values))
            raise InvalidInput(f"parameter set {name!r} has no parameter {key!r} (has: {known})")
        try:
            values[key]["value"] = coerce(values[key]["type"], raw)
        except InvalidInput as exc:
            raise InvalidInput(f"{name}.{key}: {exc}") from None
    if current.locked:
        current = ParameterSet(name=name, version=current.version + 1, values=values)
        session.add(current)
    else:
        current.values = values
    session.flush()
    return current


def flat_values(values: dict[str, Any]) -> dict[str, Any]:
    """``{key: value}`` from stored ``{key: {type, value}}`` declarations."""
    return {key: decl["value"] for key, decl in values.items()}
