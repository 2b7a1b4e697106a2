"""Which directory is the cluster's home (``PIPELINE_HOME``), found without the settings'
libraries: the CLI finds its HTTP API there before it decides to load them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: The home's directory name, looked for in the working directory and its parents when
#: PIPELINE_HOME is not set (``make demo`` makes one in the repository).
HOME_NAME = ".pipeline"
#: Where a cluster lives when PIPELINE_HOME is not set and no ``.pipeline`` is found.
DEFAULT_HOME = Path("~") / HOME_NAME
#: The name of the settings file inside PIPELINE_HOME.
SETTINGS_FILE = "settings.toml"


@dataclass(frozen=True)
class FoundHome:
    """The cluster's home directory and why it is this one, for an operator who expected
    another (a new shell without PIPELINE_HOME, say)."""

    path: Path
    reason: str


def find_home() -> FoundHome:
    """PIPELINE_HOME if set; else a ``.pipeline`` directory in the working directory or
    the nearest parent holding one; else ``~/.pipeline``."""
    if os.environ.get("PIPELINE_HOME"):
        return FoundHome(_absolute(Path(os.environ["PIPELINE_HOME"])), "from PIPELINE_HOME")
    try:
        here = Path.cwd()
    except FileNotFoundError:  # the working directory was removed
        return FoundHome(_absolute(DEFAULT_HOME), "the default: the working directory is gone")
    for directory in (here, *here.parents):
        if (directory / HOME_NAME).is_dir():
            return FoundHome(directory / HOME_NAME, f"{HOME_NAME} found in {directory}")
    return FoundHome(
        _absolute(DEFAULT_HOME),
        f"the default: PIPELINE_HOME is not set and no {HOME_NAME} in {here} or a parent",
    )


def _absolute(path: Path) -> Path:
    return path.expanduser().absolute()


def pipeline_home() -> Path:
    """The cluster's home directory (see ``find_home``), absolute, user expanded."""
    return find_home().path
