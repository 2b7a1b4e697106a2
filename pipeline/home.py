"""Which directory is the cluster's home (``PIPELINE_HOME``), found without the settings'
libraries: the CLI finds its HTTP API there before it decides to load them."""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The home's directory name, looked for in the working directory and its parents when
#: PIPELINE_HOME is not set (``make demo`` makes one in the repository).
HOME_NAME = ".pipeline"
#: Where a cluster lives when PIPELINE_HOME is not set and no ``.pipeline`` is found.
DEFAULT_HOME = Path("~") / HOME_NAME
#: The name of the settings file inside PIPELINE_HOME.
SETTINGS_FILE = "settings.toml"
#: The environment variables that make a process's settings (``PIPELINE_HOME`` only
#: names the home).
ENV_PREFIX, HOME_VARIABLE = "PIPELINE_", "PIPELINE_HOME"


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


def settings_fingerprint(home: Path) -> str:
    """A digest of what a process's settings are made from beside the defaults: the home's
    settings file and the ``PIPELINE_*`` environment variables but ``PIPELINE_HOME``."""
    digest = hashlib.sha256()
    with suppress(FileNotFoundError):
        digest.update((home / SETTINGS_FILE).read_bytes())
    for key in sorted(os.environ):
        if key.startswith(ENV_PREFIX) and key != HOME_VARIABLE:
            digest.update(f"\0{key}={os.environ[key]}".encode())
    return digest.hexdigest()


def write_run_file(home: Path, name: str, record: Any) -> None:
    """Write ``record`` as JSON to the home's ``run/NAME``, the owner's alone (it may hold a
    token or a password), replaced whole: a reader never sees half of it."""
    run = home / "run"
    run.mkdir(parents=True, exist_ok=True)
    written = run / f".{name}.{os.getpid()}"
    with os.fdopen(os.open(written, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
        json.dump(record, file)
    os.replace(written, run / name)
