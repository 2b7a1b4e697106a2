"""Where a node's executable is found: on the bin path (Ziggy's ``ziggy.pipeline.binPath``,
here the setting ``bin_path``: directories searched in order), then on ``PATH``.

Looked up when a definition is imported, so the definition names the program its workers
run by its absolute path, and a name found nowhere is refused, naming where it was looked
for, before anything is stored.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path


def runnable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find(program: str, bin_path: Sequence[Path]) -> str | None:
    """The absolute path of ``program`` (a bare name) on ``bin_path``, else on ``PATH``."""
    for directory in bin_path:
        if runnable(directory / program):
            return str((directory / program).resolve())
    return shutil.which(program)


def searched(bin_path: Sequence[Path]) -> str:
    """Where ``find`` looks, for a message: ``on the bin path (a, b) or PATH``."""
    if not bin_path:
        return "on PATH (no bin path)"
    return f"on the bin path ({', '.join(str(d) for d in bin_path)}) or PATH"
