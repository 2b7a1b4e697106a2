"""The HTTP status of an operator's problem, for the two HTTP interfaces (the API and
Flower's pipeline pages): what kind of error it is decides it, here and nowhere else."""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError

from pipeline.errors import (
    InvalidInput,
    NotFound,
    PipelineError,
    Refused,
    TooLarge,
    Unreachable,
    Unreadable,
)
from pipeline.operations.problems import Problem

#: By the kind of error, most specific first: an unknown id, a request past a size limit,
#: a value refused, a state that does not allow it, a service out of reach, a stored value
#: that cannot be read (the server's fault), any other refusal.
STATUSES: tuple[tuple[type[BaseException], int], ...] = (
    (NotFound, 404),
    (TooLarge, 413),
    (InvalidInput, 422),
    (Refused, 409),
    (Unreachable, 503),
    (Unreadable, 500),
    (PipelineError, 400),
    # A database error that is not the request's (a missing schema, say).
    (SQLAlchemyError, 503),
)
#: The status of anything else an operator meets: the settings of the server.
SERVER_STATUS = 500


def status(found: Problem) -> int:
    """The HTTP status an operator's problem answers with."""
    for kind, code in STATUSES:
        if isinstance(found.error, kind):
            return code
    return SERVER_STATUS
