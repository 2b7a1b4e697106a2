"""Parameter sets: named, typed values, versioned, locked once an instance used them."""

from __future__ import annotations

import json
import math
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pipeline.domain.limits import INT_MAX, INT_MIN, MAX_ARRAY_LENGTH, MAX_TEXT_LENGTH
from pipeline.domain.models import ParameterSet
from pipeline.errors import InvalidInput, NotFound, shown

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
    raise InvalidInput(f"unsupported value {shown(value)} (use bool, int, float, str or an array)")


def coerce(kind: str, value: Any) -> Any:
    """``value`` (a native value or the text an operator typed) as type ``kind``, within
    the limits of ``pipeline.domain.limits``: a float is finite, an int fits in 64 bits, a
    text or an array is not longer than its maximum. ``InvalidInput`` says which it is not.
    """
    if kind.endswith("[]"):
        return _coerce_array(kind[:-2], value)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise InvalidInput(f"{shown(value)} is not a bool (use true or false)")
    if kind == "str":
        text = str(value)
        if len(text) > MAX_TEXT_LENGTH:
            raise InvalidInput(f"{len(text)} characters: longer than {MAX_TEXT_LENGTH} characters")
        return text
    try:
        if isinstance(value, bool) or (kind == "int" and isinstance(value, float)):
            raise ValueError
        number = int(value) if kind == "int" else float(value)
    except (TypeError, ValueError):
        article = "an" if kind == "int" else "a"
        raise InvalidInput(f"{shown(value)} is not {article} {kind}") from None
    if kind == "float" and not math.isfinite(number):
        raise InvalidInput(f"{shown(value)} is not a finite float")
    if kind == "int" and not INT_MIN <= number <= INT_MAX:
        raise InvalidInput(f"{number} is out of range ({INT_MIN} to {INT_MAX})")
    return number


def _coerce_array(kind: str, value: Any) -> list[Any]:
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text) if text.startswith("[") else [v for v in text.split(",") if v]
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{shown(value)} is not an array of {kind}: {exc.msg}") from exc
    if not isinstance(value, list):
        raise InvalidInput(f"{shown(value)} is not an array of {kind}")
    if len(value) > MAX_ARRAY_LENGTH:
        raise InvalidInput(f"{len(value)} items: more than {MAX_ARRAY_LENGTH} items")
    return [coerce(kind, item) for item in value]


def normalize_declaration(raw: Any) -> dict[str, Any]:
    """``{type, value}`` from a definition file's ``key: value`` or ``key: {type, value}``."""
    if isinstance(raw, dict) and set(raw) == {"type", "value"}:
        kind = raw["type"]
        if kind not in TYPES:
            raise InvalidInput(f"unknown type {shown(kind)} (one of {', '.join(TYPES)})")
        return {"type": kind, "value": coerce(kind, raw["value"])}
    kind = infer_type(raw)
    return {"type": kind, "value": coerce(kind, raw)}


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
        raise NotFound(f"unknown parameter set {shown(label)}")
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
    """``["key=value", ...]`` as a dict; a malformed item names itself. A value in a pair
    of quotes, as a shell user types an empty or spaced text (``x='""'``), is the text
    inside them."""
    parsed: dict[str, str] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"{shown(item)} is not key=value")
        quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'"
        parsed[key.strip()] = value[1:-1] if quoted else value
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
            raise InvalidInput(
                f"parameter set {name!r} has no parameter {shown(key)} (has: {known})"
            )
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
