"""The one encoder pair of every JSON column: what ``dumps`` writes, ``loads`` reads back
unchanged, and ``dumps`` refuses anything else.

A JSON writer that follows Python's ``json`` module writes ``Infinity`` and ``NaN``, which
no JSON reader accepts (orjson, which reads the columns, refuses them), and orjson's own
writer writes them as ``null``: either way the value read back is not the one written.
So a non-finite number is refused when written (``InvalidInput``), as is an integer
beyond 64 bits; a stored value that cannot be read (a hand edit, an older version) raises
``Unreadable``, one line, instead of a decoder's error.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from pipeline.errors import InvalidInput, Unreadable, shown

#: Dict keys written as strings, as Python's json module writes them.
DUMPS_OPTIONS = orjson.OPT_NON_STR_KEYS


def dumps(value: Any) -> str:
    """``value`` as JSON text; ``InvalidInput`` for a value that would not read back."""
    try:
        text = orjson.dumps(value, option=DUMPS_OPTIONS)
    except orjson.JSONEncodeError as exc:
        raise InvalidInput(f"cannot store {shown(value)}: {exc}") from None
    # orjson writes a non-finite float as null: only a text holding a null can hide one.
    if b"null" in text:
        _refuse_non_finite(value, value)
    return text.decode()


def loads(text: str | bytes) -> Any:
    """The value of stored JSON text; ``Unreadable`` (one line) if it is not valid JSON or
    holds a number no float can hold."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise Unreadable(str(exc)) from None


def _refuse_non_finite(value: Any, whole: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(f"cannot store {shown(whole)}: {value} is not a finite number")
    if isinstance(value, dict):
        for item in value.values():
            _refuse_non_finite(item, whole)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _refuse_non_finite(item, whole)
