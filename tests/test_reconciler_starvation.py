"""The reconciler never waits behind work: with every worker slot busy with long subtasks
and more queued behind them for many intervals, beat's reconciler still runs every
interval (its heartbeat is fresh), and no "reconciler not running" alert is raised while
beat is alive. (Issue 28: 27 such alerts in one run, only 4 while something was down.)"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.support import Cluster, started_cluster, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("starvation")]

#: Seconds each subtask runs: with one worker of two slots, eight subtasks keep every slot
#: busy, and six messages queued behind them, for many reconciler intervals of 1 s.
PAUSE = 8


@pytest.fixture(scope="module")
def busy() -> Iterator[Cluster]:
    with started_cluster(PIPELINE_WORKER_CONCURRENCY="2", PIPELINE_CLUSTER_SERVICES="") as made:
        yield made


def test_every_slot_busy_for_many_intervals_raises_no_false_alert(busy: Cluster) -> None:
    busy.set_parameters(throw_exception_subtask_0=False, execution_pause_seconds=PAUSE)
    instance = busy.submit("--end-node", "permuter")
    wait_for(
        lambda: sum(t["p_state"] == "ALGORITHM_EXECUTING" for t in busy.tasks(instance)) >= 1,
        what="the subtasks to be running",
    )
    watched_until = time.monotonic() + PAUSE + 2  # every slot busy all along
    while time.monotonic() < watched_until:
        alerts = busy.json("alerts")
        assert not [a for a in alerts if "reconciler not running" in a["message"]], alerts
    busy.cli("halt", "--instance", instance)
