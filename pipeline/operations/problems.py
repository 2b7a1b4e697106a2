"""An error as an operator reads it: one line, whatever raised it. Every interface reports
an operator's problem through ``problem`` (the CLI on stderr, the HTTP API and Flower's
pages with the status they give it, Flower's operations in their result); anything else
is a bug, for the interface to log whole."""

from __future__ import annotations

from dataclasses import dataclass
from tomllib import TOMLDecodeError

from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError, StatementError

from pipeline.database import describe_database_error
from pipeline.errors import PipelineError, one_line

#: The kinds of error ``problem`` reports as an operator's problem.
PROBLEMS = (PipelineError, SQLAlchemyError, ValidationError, TOMLDecodeError)


@dataclass(frozen=True)
class Problem:
    """An operator's problem: its one line, and the error it stands for (an interface
    tells its kind by it)."""

    message: str
    error: BaseException


def problem(exc: BaseException) -> Problem | None:
    """The one-line report of an error an operator can cause or meet; None for anything
    else (a bug)."""
    if isinstance(exc, StatementError) and isinstance(exc.orig, PipelineError):
        exc = exc.orig  # raised writing a value (a JSON column refusing a non-finite number)
    if isinstance(exc, PipelineError):
        return Problem(one_line(str(exc)), exc)
    if isinstance(exc, SQLAlchemyError):
        return Problem(describe_database_error(exc), exc)
    if isinstance(exc, ValidationError) and exc.title == "Settings":
        error = exc.errors()[0]
        name = ".".join(map(str, error["loc"]))
        return Problem(f"setting {name}: {error['msg']} (from PIPELINE_* or settings.toml)", exc)
    if isinstance(exc, TOMLDecodeError):
        return Problem(f"settings file is not valid TOML: {exc}", exc)
    return None
