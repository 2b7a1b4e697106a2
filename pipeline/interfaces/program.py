"""The ``pipeline`` program's entry: a read written plainly runs without Typer
(``reads.plain_read``), every other command line through ``cli``."""

from __future__ import annotations

import sys

from pipeline.interfaces.reads import plain_read


def main() -> None:
    """Run the ``pipeline`` program: a plain read here, anything else through ``cli``
    (whose errors, one line each, this shares)."""
    read = plain_read(sys.argv[1:])
    if read is None:
        from pipeline.interfaces.cli import main as parsed_by_typer

        parsed_by_typer()
        return
    try:
        read()
    except Exception as exc:  # noqa: BLE001 - reported as cli reports it, or raised
        from pipeline.interfaces.cli import fail

        fail(exc)
    raise SystemExit(0)
