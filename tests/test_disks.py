"""A disk filling up is an alert, not a hang: the reconciler looks at the file systems of
the home, the datastore and the task root once an interval; one running low raises one
alert for as long as it lasts (a warning, then an error when writes are about to fail),
cleared when space returns."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.operations import queries
from pipeline.recovery import disks, reconcile
from tests.support import InProcessWorker

MIB = 1 << 20


@pytest.fixture
def free_space(home: Path, worker: InProcessWorker, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The free space every file system reports, as the test sets it (of 10 GiB)."""
    reported = {"free": 5000 * MIB}
    monkeypatch.setattr(disks, "space", lambda path: disks.Space(reported["free"], 10240 * MIB))
    return reported


def disk_alerts() -> list[tuple[str, str, bool]]:
    return [
        (a["severity"], a["message"], a["cleared_at"] is not None)
        for a in queries.list_alerts()
        if "disk" in a["message"]
    ]


def test_a_disk_running_low_is_alerted_once_while_it_lasts_and_cleared_after(
    free_space: dict, home: Path
) -> None:
    reconcile.reconcile_once()
    assert disk_alerts() == []

    free_space["free"] = 500 * MIB  # under 10%
    reconcile.reconcile_once()
    reconcile.reconcile_once()
    [warning] = disk_alerts()
    assert warning[0] == "warning" and not warning[2]
    assert warning[1].startswith(f"the home's disk ({home}) is filling up: 500 MiB (4.9%) free")

    free_space["free"] = 100 * MIB  # under 256 MiB: writes are about to fail
    reconcile.reconcile_once()
    [first, error] = disk_alerts()
    assert first[2], "the warning is over: an error now"
    assert error[0] == "error" and "is nearly full: 100 MiB" in error[1] and not error[2]
    assert "stores, logs and the database will fail" in error[1]

    free_space["free"] = 6000 * MIB
    reconcile.reconcile_once()
    assert [cleared for *_, cleared in disk_alerts()] == [True, True]
    free_space["free"] = 400 * MIB
    reconcile.reconcile_once()
    assert len(disk_alerts()) == 3, "a new episode, a new alert"


def test_the_file_systems_watched_are_each_named_once(home: Path) -> None:
    from pipeline.settings import get_settings

    watched = disks.watched(get_settings())
    assert list(watched) == ["home"], "the home, datastore and task root share one here"
