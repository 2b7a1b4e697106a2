"""The errors an operator can cause or meet; each prints as one line, never a traceback."""


class PipelineError(Exception):
    """Base of every error the CLI and the API report as a one-line message."""

    #: HTTP status the API answers with.
    status = 400


class NotFound(PipelineError):
    """An instance, task, pipeline, node or parameter set that does not exist."""

    status = 404


class InvalidInput(PipelineError):
    """A value of the wrong type, an unknown key, a malformed file."""

    status = 422


class Refused(PipelineError):
    """A request that is well formed but not allowed in the current state."""

    status = 409


class Unreachable(PipelineError):
    """The database or the broker cannot be reached."""

    status = 503
