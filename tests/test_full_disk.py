"""A full disk is an alert, not a hang: on a small tmpfs (the datastore alone, Redis's
directory alone, the whole home), a write that fails for space fails its task with one
line or waits for the reconciler, the alert says which disk or that the broker cannot
write, and once space returns a restart (or nothing at all) completes the work, the ledger
matching every current file's bytes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pipeline.messaging.publisher import publisher
from pipeline.operations import queries
from pipeline.recovery import disks
from tests.support import (
    FAST_SETTINGS,
    Cluster,
    assert_completed_exactly_once,
    assert_ledger_matches_bytes,
    assert_one_line_error,
    clean_env,
    fill,
    just_started,
    make_cluster,
    permuter_run,
    tmpfs,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("full-disk")]

STOPPED_WITH_ERRORS = 1


@contextmanager
def cluster_on(**settings: str) -> Iterator[Cluster]:
    made = make_cluster("sqlite", None, PIPELINE_CLUSTER_SERVICES="", **settings)
    try:
        yield made
    finally:
        made.stop()
        shutil.rmtree(made.home, ignore_errors=True)


def alerts_saying(cluster: Cluster, fragment: str) -> list[dict[str, Any]]:
    return [a for a in cluster.json("alerts") if fragment in a["message"]]


def test_a_full_datastore_fails_the_task_with_one_line_and_a_restart_completes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        tmpfs(tmp_path / "datastore", 16) as datastore,
        cluster_on(PIPELINE_DATASTORE_ROOT=str(datastore), PIPELINE_DISK_ERROR_FREE_MB="1") as c,
    ):
        c.start()
        c.activate(monkeypatch)
        filler = fill(datastore)
        instance = c.submit()
        c.wait(instance, expect=STOPPED_WITH_ERRORS)
        errors = [
            s["error"] or t["message"]
            for t in c.tasks(instance)
            if t["error"]
            for s in c.json("subtasks", t["id"]) + [{"error": t.get("message", "")}]
            if s["error"]
        ]
        assert errors and all("No space left on device" in e for e in errors), errors
        wait_for(lambda: alerts_saying(c, "the datastore's disk"), what="the disk's alert")
        assert alerts_saying(c, "the datastore's disk")[0]["severity"] == "error"

        filler.unlink()
        c.restart("--instance", instance, "--mode", "restart-from-beginning")
        c.wait(instance)
        assert assert_ledger_matches_bytes(datastore) >= 8 + 8 + 16 + 2
        wait_for(
            lambda: all(a["cleared_at"] for a in alerts_saying(c, "the datastore's disk")),
            what="the disk's alert to clear",
        )


def test_a_broker_that_cannot_write_its_disk_is_an_alert_and_the_work_completes_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis's directory alone fills up mid-run: Redis refuses every write (MISCONF); the
    reconciler says the broker cannot write to its disk; a submit meanwhile is taken and
    says its messages wait for the reconciler; once space returns both instances complete,
    each subtask run once, with nobody restarting anything."""
    with cluster_on() as c, tmpfs(c.home / "redis", 16) as redis_dir:
        c.start()
        c.activate(monkeypatch)
        running = permuter_run(c, pause=2)
        wait_for(lambda: len(just_started()) >= 1, what="a subtask running")
        filler = fill(redis_dir)
        said = wait_for(
            lambda: alerts_saying(c, "cannot write to its disk"), what="the broker's alert"
        )
        assert said[0]["severity"] == "error"
        # Redis answers MISCONF to a write, and maybe to the submit's check before it: then
        # the submit is refused and changes nothing, else it is taken and says it waits.
        before = c.json("instances")
        result = c.cli("submit", "sample", "--end-node", "permuter", "--json", check=False)
        if result.returncode:
            assert_one_line_error(result, "cannot write to its disk: MISCONF")
            assert c.json("instances") == before
            taken = []
        else:
            submitted = json.loads(result.stdout)
            assert submitted["message"].startswith("queued: the broker refused its messages")
            assert "cannot write to its disk: MISCONF" in submitted["message"]
            taken = [submitted["id"]]

        filler.unlink()
        for instance in (running, *taken):
            assert_completed_exactly_once(c, instance)
            for task in c.tasks(instance):
                assert c.attempts(task["id"]) == [1, 1, 1, 1]
        wait_for(
            lambda: all(a["cleared_at"] for a in alerts_saying(c, "cannot write to its disk")),
            what="the broker's alert to clear",
        )
        assert_ledger_matches_bytes(c.datastore)


def test_a_full_home_stops_nothing_silently_and_the_work_completes_once_space_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole home (database, Redis, logs, datastore, task directories) on one small
    tmpfs: running low is an error alert while the database can still write it; then full
    to the last byte mid-run, every writer fails (Redis MISCONF, SQLite full, logs); once
    space returns, ``cluster start`` starts what died and the instance completes, each
    subtask stored once, the ledger matching the bytes."""
    with tmpfs(tmp_path / "home", 64) as home:
        env = clean_env(
            PIPELINE_HOME=str(home),
            PIPELINE_CLUSTER_SERVICES="",
            PIPELINE_DISK_ERROR_FREE_MB="24",
            **FAST_SETTINGS,
        )
        c = Cluster(home=home, env=env, backend="sqlite")
        c.cli("cluster", "init")
        try:
            c.start()
            c.activate(monkeypatch)
            low = home / "low"
            low.write_bytes(b"\0" * ((int(disks.space(home).free) >> 20) - 16 << 20))
            said = wait_for(lambda: alerts_saying(c, "the home's disk"), what="the alert")
            assert said[0]["severity"] == "error" and "nearly full" in said[0]["message"]

            instance = permuter_run(c, pause=2)
            wait_for(lambda: len(just_started()) >= 1, what="a subtask running")
            filler = fill(home)
            wait_for(lambda: publisher().persistence_problem(), what="Redis to fail its writes")
            filler.unlink()
            low.unlink()
            c.start()
            restart_what_the_full_disk_failed(c, instance)
            assert_completed_exactly_once(c, instance)
            assert_ledger_matches_bytes(c.datastore)
        finally:
            c.stop()


#: How a write refused for space reads in a subtask's error (the algorithm's own file, or
#: the database).
NO_SPACE = ("No space left on device", "database or disk is full")


def restart_what_the_full_disk_failed(c: Cluster, instance: int) -> None:
    """A subtask whose write met the full disk failed, its error saying so (whether one
    did depends on where it was when the disk filled): the operator restarts the failed
    tasks once space has returned. Any other failure is left for the test to report."""
    if c.cli("wait", instance, "--timeout", 180, check=False, timeout=210).returncode == 0:
        return
    errors = [
        subtask["error"]
        for task in queries.list_tasks(instance)
        for subtask in queries.list_subtasks(task["id"])
        if subtask["state"] == "FAILED"
    ]
    assert errors and all(any(n in e for n in NO_SPACE) for e in errors), errors
    c.restart("--instance", instance, "--mode", "resubmit")
