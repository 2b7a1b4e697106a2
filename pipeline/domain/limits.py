"""The documented limits of every value that enters the database (docs/deployment.md, Limits).

Numbers are finite and in range, texts and lists bounded, ids within the SQL INTEGER
columns that hold them; ``true`` and ``false`` are not numbers. The annotated types here
are what the execution settings, the HTTP API's bodies and Flower's operations declare,
so every interface refuses the same values with the same words.
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import SHOWN_CHARACTERS, InvalidInput, shown

#: Ids (instances, tasks, alerts) are 1 to this: the largest a SQL INTEGER column holds.
MAX_ID = 2**31 - 1
#: The largest count an execution setting takes (failed subtasks tolerated, resubmits,
#: subtasks per message).
MAX_COUNT = 2**31 - 1
#: The longest subtask timeout, in seconds (30 days).
MAX_SUBTASK_TIMEOUT = 30 * 24 * 3600.0
#: An ``int`` parameter is a signed 64-bit integer.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
#: Characters of a ``str`` parameter value, at most.
MAX_TEXT_LENGTH = 10_000
#: Items of an array parameter value, at most.
MAX_ARRAY_LENGTH = 10_000
#: Tasks one restart or halt request names, at most.
MAX_TASKS_PER_REQUEST = 10_000
#: Characters of a name (pipeline, node, parameter set, queue), at most: its column's size.
MAX_NAME_LENGTH = 200
#: Priorities of subtask messages: 0 runs first, 9 last.
PRIORITY_FIRST, PRIORITY_LAST = 0, 9
#: Why a boolean given for a number is refused.
NOT_A_NUMBER = "true and false are not numbers"


def _refuse_bool(value: Any) -> Any:
    """JSON's ``true`` is not the integer 1 (pydantic's lax mode would take it as one)."""
    if isinstance(value, bool):
        raise ValueError(NOT_A_NUMBER)
    return value


#: The annotated types every interface declares, made when first imported (``__getattr__``):
#: they need pydantic, and a read command, which checks ids here, must answer without
#: importing it (a tenth of a second).
ANNOTATED = ("NotBool", "Id", "Count", "PositiveCount", "Price", "Priority", "Seconds")


def _annotated() -> dict[str, Any]:
    from typing import Annotated

    from pydantic import BeforeValidator, Field

    not_bool = BeforeValidator(_refuse_bool)
    # The constraints before the validator, so the JSON schema shows them as its bounds.
    return {
        "NotBool": not_bool,
        "Id": Annotated[int, Field(ge=1, le=MAX_ID), not_bool],
        "Count": Annotated[int, Field(ge=0, le=MAX_COUNT), not_bool],
        "PositiveCount": Annotated[int, Field(ge=1, le=MAX_COUNT), not_bool],
        #: A price (of a node-hour), in whatever unit its remote environment counts.
        "Price": Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False), not_bool],
        "Priority": Annotated[int, Field(ge=PRIORITY_FIRST, le=PRIORITY_LAST), not_bool],
        "Seconds": Annotated[
            float, Field(gt=0, le=MAX_SUBTASK_TIMEOUT, allow_inf_nan=False), not_bool
        ],
    }


def __getattr__(name: str) -> Any:
    """The annotated types (``ANNOTATED``), made on first use, once."""
    if name not in ANNOTATED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals().update(_annotated())
    return globals()[name]


def check_id(value: Any, what: str) -> int:
    """``value`` as the id of a ``what`` (instance, task, alert); ``InvalidInput`` naming it
    when it is no integer from 1 to ``MAX_ID`` (a 2**63 would overflow the database's
    integer before it could be found missing)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise InvalidInput(f"{what} id {shown(value)} is out of range (1 to {MAX_ID})")
    return value


def parse_id(text: str, what: str) -> int:
    """The id of a ``what`` typed as ``text`` (a form field, ``TASK:MODE``); ``InvalidInput``
    for anything but digits naming an id in range (read without converting a thousand
    digits: Python refuses to)."""
    text = text.strip()
    if not text.isdigit():
        article = "an" if what[:1] in "aeiou" else "a"
        raise InvalidInput(f"{shown(text)} is not {article} {what} id")
    if len(text) > len(str(MAX_ID)):
        digits = text[:SHOWN_CHARACTERS] + ("..." if len(text) > SHOWN_CHARACTERS else "")
        raise InvalidInput(f"{what} id {digits} is out of range (1 to {MAX_ID})")
    return check_id(int(text), what)


def check_index(value: Any, what: str) -> int:
    """``value`` as the index of a ``what`` (subtask): an integer from 0 to ``MAX_ID``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise InvalidInput(f"{what} index {shown(value)} is out of range (0 to {MAX_ID})")
    return value


def check_priority(value: Any) -> int | None:
    """``value`` as an instance's priority (or none); ``InvalidInput`` unless an integer
    from ``PRIORITY_FIRST`` to ``PRIORITY_LAST``."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidInput(f"priority {value}: {NOT_A_NUMBER}")
    if not isinstance(value, int) or not PRIORITY_FIRST <= value <= PRIORITY_LAST:
        raise InvalidInput(
            f"priority {shown(value)} is out of range ({PRIORITY_FIRST} to {PRIORITY_LAST})"
        )
    return value


def check_count(items: Any, what: str, limit: int = MAX_TASKS_PER_REQUEST) -> None:
    """Refuse a request naming more than ``limit`` ``what`` (tasks) at once."""
    if len(items) > limit:
        raise InvalidInput(f"{len(items)} {what} in one request: at most {limit}")
