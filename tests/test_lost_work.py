"""Lost work: workers die mid-run (mid-subtask, three times over, mid-marshal) and the
instance still completes without an operator, each output stored exactly once and right,
within the recovery time docs/operator-guide.md promises ("When processes die"). Redis,
PostgreSQL and beat dying are in ``test_lost_services.py``.

Chaos is what production meets, so these run on PostgreSQL, the production database; the
module's tests share one cluster, in order, each starting what the one before killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.operations import facade, queries
from tests.support import (
    Cluster,
    assert_completed_exactly_once,
    back_in_flight,
    instance_alerts,
    just_started,
    permuter_run,
    run_cli,
    wait_for,
)
from tests.test_versions import DEFINITION as SCRIBBLING

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.chaos,
    pytest.mark.postgres,
    pytest.mark.xdist_group("chaos-workers"),
]


#: The workers of the module's chaos cluster (see the ``chaos`` fixture).
CHAOS_WORKERS = 2


# -- a and b: workers killed -----------------------------------------------------------------


def test_worker_killed_mid_subtask_its_work_is_redone_elsewhere(
    chaos: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """b: the whole worker1 (parent and pool) is killed and never comes back."""
    worker1 = chaos.pid("worker1")
    instance = permuter_run(chaos, pause=3)
    lost = wait_for(
        lambda: just_started(lambda s: s.worker_host.startswith("worker1@")),
        what="a subtask running on worker1",
    )
    os.killpg(worker1, signal.SIGKILL)
    killed_at = time.monotonic()
    # Every subtask worker1 was running dies with it, not only the one just started.
    on_worker1 = just_started(lambda s: s.worker_host.startswith("worker1@"), within=3600)
    # What an operator sees until the lease lapses: the subtask, its worker and heartbeat.
    detail = queries.get_task(lost[0]["task_id"])
    [shown] = [s for s in detail["running"] if s["index"] == lost[0]["index"]]
    assert shown["worker_host"].startswith("worker1@") and shown["worker_pid"] > 0
    assert shown["heartbeat_at"] >= shown["started_at"]
    # In this process: a new one's start-up alone can outlast the lease on a busy machine.
    table = run_cli(capsys, "task", detail["id"]).stdout
    assert "running subtasks" in table and "last heartbeat" in table and "worker1@" in table
    chaos.kill("worker1")
    back_in_flight(lost[0], since=killed_at)
    victims = [(s["task_id"], s["index"]) for s in on_worker1]

    assert_completed_exactly_once(chaos, instance)
    assert not chaos.process("worker1")["alive"]
    for task_id, index in victims:
        subtask = queries.list_subtasks(task_id)[index]
        assert subtask["attempts"] == 2 and subtask["worker_host"].startswith("worker2@")
        history = [e["message"] for e in queries.get_task(task_id)["history"]]
        assert f"subtask {index}: worker lost, dispatched again" in history

    raised = instance_alerts(chaos, instance)
    lost = [a for a in raised if "lost, dispatched again" in a["message"]]
    assert {(a["task_id"], a["severity"]) for a in lost} == {(t, "warning") for t, _ in victims}
    assert all("worker1@" in a["message"] for a in lost)
    chaos.cli("alerts", "ack", raised[0]["id"])
    for alert in raised[1:]:
        facade.acknowledge_alert(alert["id"])
    assert instance_alerts(chaos, instance) == []
    assert all(a["acknowledged"] for a in instance_alerts(chaos, instance, "--all"))
    again = chaos.cli("alerts", "ack", raised[0]["id"], check=False)
    assert again.returncode == 1 and "already acknowledged" in again.stderr


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError):
        return 0


def test_worker_killed_three_times_each_replacement_carries_on(chaos: Cluster) -> None:
    """a: the only worker is killed mid-subtask three times in one run; each time a
    replacement is started (``chaos start`` starts what is not running)."""
    chaos.kill("worker2")  # worker1 alone: the run waits for each replacement
    instance = permuter_run(chaos, pause=3)
    victims = []
    for _ in range(3):
        worker = chaos.pid("worker1")
        [victim, *_] = wait_for(
            lambda worker=worker: just_started(lambda s: _parent(s.worker_pid) == worker),
            what="a subtask running on the current worker",
        )
        chaos.kill("worker1")
        victims.append((victim["task_id"], victim["index"], victim["attempts"]))
        chaos.start(workers=1)
        # Measured from the replacement: beat's reconciler runs on a worker, and none was up.
        back_in_flight(victim, since=time.monotonic())

    assert_completed_exactly_once(chaos, instance)
    for task_id, index, attempts in victims:
        assert queries.list_subtasks(task_id)[index]["attempts"] > attempts
    lost = [a for a in instance_alerts(chaos, instance) if "lost, dispatched again" in a["message"]]
    assert len(lost) >= 3


# -- a marshal whose worker dies -------------------------------------------------------------


def test_marshal_killed_mid_step_is_marshaled_again(chaos: Cluster) -> None:
    """A worker dies while marshaling: the task sits in MARSHALING with nothing moving it.
    Its step lease lapses, and the reconciler marshals it again under a new attempt."""
    chaos.kill("worker1")  # the test's own process plays the worker that will die
    chaos.kill("worker2")
    instance = permuter_run(chaos, pause=0)
    task = queries.list_tasks(instance)[0]
    hanging = (
        "import sys, time\n"
        "from pipeline.engine import stages, taskdir\n"
        "taskdir.prepare = lambda *args: time.sleep(3600)\n"
        "stages.marshal(int(sys.argv[1]), 1)\n"
    )
    dying = subprocess.Popen([sys.executable, "-c", hanging, str(task["id"])], env=chaos.env)
    try:
        wait_for(
            lambda: queries.get_task(task["id"])["p_state"] == "MARSHALING",
            what="the task claimed by the doomed marshal",
        )
    finally:
        dying.kill()
        dying.wait()
    chaos.start(workers=2)

    assert_completed_exactly_once(chaos, instance)
    detail = queries.get_task(task["id"])
    assert detail["attempt"] == 2
    assert any("marshaling lost" in e["message"] for e in detail["history"])
    assert any("marshaling lost" in a["message"] for a in instance_alerts(chaos, instance))


# -- a store killed halfway through placing its outputs ------------------------------------------

#: Files of the large store: its outputs are placed over other bytes at the same paths.
LARGE_STORE = 2000
DYING_STORE = """
import os, time
from pipeline.engine import datastore, datastore_ledger

def place_half(outputs):
    for output in outputs[: len(outputs) // 2]:
        datastore.place(output.staged)
    open(os.environ["PIPELINE_TEST_HALF_PLACED"], "w").close()
    time.sleep(3600)

datastore_ledger.place_pending = place_half
"""
#: The scribbling pipeline of test_versions, by another name, 100 files a subtask.
COPYING = (
    SCRIBBLING.replace("name: scribbling", "name: copying") + "    subtasks: {group_size: 100}\n"
)


def test_a_store_killed_halfway_leaves_a_ledger_that_describes_the_disk(
    chaos: Cluster, tmp_path: Path
) -> None:
    """kill -9 of the worker placing a 2,000-file store halfway: while recovery runs every
    path shows its current version or one being placed, and the store sent again finishes
    the work, with the history line and the alert the operator guide promises."""
    from tests.test_placement import disagreements, pending_rows

    definition = tmp_path / "copying.yaml"
    definition.write_text(COPYING)
    chaos.cli("definitions", "import", definition)
    notes = chaos.datastore / "big" / "in"
    notes.mkdir(parents=True, exist_ok=True)
    for number in range(LARGE_STORE):
        (notes / f"n{number:05d}.txt").write_text(f"note {number}")
    first = int(chaos.json("submit", "copying")["id"])
    chaos.wait(first)
    for number in range(LARGE_STORE):  # new bytes: the next store replaces every path
        (notes / f"n{number:05d}.txt").write_text(f"note {number}, revised")

    chaos.kill("worker1")
    chaos.kill("worker2")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(DYING_STORE)
    half_placed = tmp_path / "half-placed"
    env = {
        **chaos.env,
        "PYTHONPATH": f"{hooks}:{chaos.env['PYTHONPATH']}",
        "PIPELINE_TEST_HALF_PLACED": str(half_placed),
    }
    doomed = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "worker", "--hostname", "doomed", "--concurrency", "2"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        second = int(chaos.json("submit", "copying")["id"])
        wait_for(half_placed.exists, timeout=120, what="the store to place half its outputs")
    finally:
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait()
    [task] = queries.list_tasks(second)
    assert task["p_state"] == "STORING" and pending_rows() == LARGE_STORE
    assert disagreements(chaos.datastore) == []

    chaos.start(workers=2)

    def recovered() -> bool:
        assert disagreements(chaos.datastore) == [], "while recovery runs"
        return bool(queries.get_task(task["id"])["p_state"] == "COMPLETE")

    wait_for(recovered, timeout=120, what="the store sent again to complete")
    assert pending_rows() == 0 and disagreements(chaos.datastore) == []
    assert not (chaos.datastore / "big" / "out" / ".pipeline-staging").exists()
    history = [e["message"] for e in queries.get_task(task["id"])["history"]]
    assert any("store sent again (worker or message lost)" in line for line in history)
    # Its alert, unless its queue had no consumer yet when it was sent again (the workers
    # still starting): the queue's alert says so instead (docs/operator-guide.md).
    sent_again = any("store sent again" in a["message"] for a in instance_alerts(chaos, second))
    no_consumer = any("no worker consumes queue" in a["message"] for a in chaos.json("alerts"))
    assert sent_again or no_consumer
    assert (
        chaos.datastore / "big" / "out" / "n00007.out"
    ).read_text() == "NOTE 7, REVISED SCRIBBLED"
