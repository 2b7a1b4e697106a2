"""The file systems the pipeline writes to, watched by the reconciler: the home (the
database, Redis's persistence, logs), the datastore and the task root. One running low is
an alert, raised once while it lasts and cleared when space returns: a warning below
``disk_warning_free_percent`` free, an error below ``disk_error_free_mb`` (writes are about
to fail: stores, logs, the database), instead of tasks that hang and an empty alert list.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from pipeline.database import transaction
from pipeline.engine import alerts
from pipeline.settings import Settings

MIB = 1 << 20


class Space(NamedTuple):
    """A file system's free space, as an unprivileged writer has it."""

    free: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.free / self.total if self.total else 100.0


def space(path: Path) -> Space:
    found = os.statvfs(path)
    return Space(found.f_bavail * found.f_frsize, found.f_blocks * found.f_frsize)


def watched(settings: Settings) -> dict[str, Path]:
    """What the pipeline writes to, by what an operator calls it, one path per file system
    (the first named of those sharing one)."""
    named = {
        "home": settings.home,
        "datastore": settings.datastore,
        "task root": settings.tasks_dir,
    }
    chosen: dict[str, Path] = {}
    devices: set[int] = set()
    for name, path in named.items():
        try:
            device = os.stat(path).st_dev
        except OSError:
            continue  # not made yet
        if device not in devices:
            devices.add(device)
            chosen[name] = path
    return chosen


def watch(settings: Settings) -> int:
    """Look at each file system once: raise what is low, clear what recovered; how many
    alerts were raised."""
    raised = 0
    for name, path in watched(settings).items():
        try:
            found = space(path)
        except OSError:
            continue
        level = _level(found, settings)
        with transaction() as session:
            for severity in (alerts.ERROR, alerts.WARNING):
                cause = f"disk:{path}:{severity}"
                if severity != level:
                    alerts.clear(session, cause)
                    continue
                raised += alerts.raise_once(
                    session, cause, severity, _message(name, path, found, settings)
                )
    return raised


def _level(found: Space, settings: Settings) -> str | None:
    if found.free < settings.disk_error_free_mb * MIB:
        return alerts.ERROR
    if found.percent < settings.disk_warning_free_percent:
        return alerts.WARNING
    return None


def _message(name: str, path: Path, found: Space, settings: Settings) -> str:
    free = f"{found.free / MIB:,.0f} MiB ({found.percent:.1f}%) free"
    if found.free < settings.disk_error_free_mb * MIB:
        return (
            f"the {name}'s disk ({path}) is nearly full: {free}; stores, logs and the database"
            " will fail: free space, then restart what failed"
        )
    return (
        f"the {name}'s disk ({path}) is filling up: {free}, below"
        f" {settings.disk_warning_free_percent:g}%"
    )
