"""The errors an operator can cause or meet; each prints as one line, never a traceback.

An error quotes what it was given through ``shown``: a short prefix, never a whole input
(a 10 MB name stays out of the answer and the logs).
"""

from pathlib import Path
from typing import Any

#: Characters of an input an error message quotes at most.
SHOWN_CHARACTERS = 60
#: Characters of a one-line report, at most: whatever an error quotes, an answer stays short.
MAX_MESSAGE_CHARACTERS = 1000


def shown(value: Any) -> str:
    """``repr(value)``, cut to its first ``SHOWN_CHARACTERS`` characters."""
    text = repr(value)
    if len(text) <= SHOWN_CHARACTERS:
        return text
    return f"{text[:SHOWN_CHARACTERS]}... ({len(text)} characters)"


def one_line(text: str) -> str:
    """``text`` as one line of at most ``MAX_MESSAGE_CHARACTERS``."""
    line = " ".join(text.split())
    if len(line) <= MAX_MESSAGE_CHARACTERS:
        return line
    return f"{line[:MAX_MESSAGE_CHARACTERS]}... (cut short)"


class PipelineError(Exception):
    """Base of every error the CLI and the API report as a one-line message."""


class NotFound(PipelineError):
    """An instance, task, pipeline, node or parameter set that does not exist."""


class InvalidInput(PipelineError):
    """A value of the wrong type, an unknown key, a malformed file."""


class TooLarge(PipelineError):
    """A request body past its documented size limit."""


class Refused(PipelineError):
    """A request that is well formed but not allowed in the current state."""


class Unreachable(PipelineError):
    """The database or the broker cannot be reached."""


class Unreadable(PipelineError):
    """A stored value that cannot be read back (written by hand, or by an older version):
    the server's state, not the request, is at fault."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"a stored value cannot be read: {reason}")
        #: What the reader said, in one line.
        self.reason = reason


def named_file(file: Path) -> Path:
    """``file``, a file a command or a request names on this host: one that is not there
    (a NUL in its name names none) is unknown, a directory no file."""
    if "\x00" in str(file) or not file.exists():
        raise NotFound(f"{str(file)[:200]!r}: no such file")
    if not file.is_file():
        raise InvalidInput(f"{file}: not a file")
    return file
