"""Restart modes and halt on the sample pipeline: which subtasks really ran again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image

from config.sample.algorithms import CHANNEL_ORDER
from config.sample.images import pixels, raw_image_path
from tests.conftest import started_cluster, wait_for

pytestmark = pytest.mark.e2e


def failing_instance(cluster, *submit_args: str) -> tuple[int, list[dict]]:
    """An instance whose permuter tasks end ERROR - ALGORITHM_COMPLETE, 3/4 (1)."""
    cluster.cli("params", "set", "algorithm", "throw_exception_subtask_0=true")
    instance = cluster.submit(*submit_args)
    assert cluster.wait(instance).returncode == 1
    tasks = cluster.tasks(instance)
    assert {(t["state"], t["counts"]) for t in tasks} == {("ERROR - ALGORITHM_COMPLETE", "3/4 (1)")}
    return instance, tasks


def attempts(cluster, task_id: int) -> list[int]:
    return [s["attempts"] for s in cluster.json("subtasks", task_id)]


def outputs_in_task_dir(cluster, task_id: int) -> dict[str, int]:
    task_dir = Path(cluster.json("task", task_id)["task_dir"])
    return {
        str(p.relative_to(task_dir)): p.stat().st_mtime_ns for p in task_dir.glob("st-*/*-perm.png")
    }


def restart(cluster, *args, check: bool = True) -> list[dict]:
    result = cluster.cli("restart", *args, "--json", check=check)
    return json.loads(result.stdout)


def test_resubmit_reruns_only_the_failed_subtask_and_it_fails_again(cluster) -> None:
    instance, tasks = failing_instance(cluster)
    first, second = tasks[0]["id"], tasks[1]["id"]
    good_outputs = outputs_in_task_dir(cluster, first)
    assert sorted(good_outputs) == [f"st-{i}/nasa-logo-file-{i}-perm.png" for i in (1, 2, 3)]

    [outcome] = restart(cluster, first, "--mode", "resubmit")
    assert outcome["ok"] and outcome["start_from"] == "ALGORITHM_SUBMITTING"
    assert outcome["subtasks"] == [0]
    assert cluster.wait(instance).returncode == 1

    assert attempts(cluster, first) == [2, 1, 1, 1], "only subtask 0 ran again"
    assert attempts(cluster, second) == [1, 1, 1, 1], "the other task was not restarted"
    assert outputs_in_task_dir(cluster, first) == good_outputs, "successful subtasks untouched"
    task = cluster.json("task", first)
    assert (task["state"], task["counts"], task["attempt"]) == (
        "ERROR - ALGORITHM_COMPLETE",
        "3/4 (1)",
        2,
    )
    assert "restart: resubmit" in [e["message"] for e in task["history"]]
    assert not list(cluster.datastore.glob("set-*/L1/*")), "parameters are frozen: still failing"


def test_resume_current_step_stores_the_good_subtasks_and_the_instance_goes_on(cluster) -> None:
    instance, tasks = failing_instance(cluster)
    dry = restart(cluster, "--instance", instance, "--mode", "resume-current-step", "--dry-run")
    assert [(o["task_id"], o["start_from"]) for o in dry] == [(t["id"], "STORING") for t in tasks]
    assert cluster.tasks(instance) == tasks, "a dry run changes nothing"

    restart(cluster, "--instance", instance, "--mode", "resume-current-step")
    assert cluster.wait(instance).returncode == 0
    final = cluster.tasks(instance)
    by_node = {(t["node"], t["unit_of_work"]): t for t in final}
    for unit in ("set-1", "set-2"):
        assert (by_node[("permuter", unit)]["state"], by_node[("permuter", unit)]["counts"]) == (
            "COMPLETE",
            "3/4 (1)",
        )
        assert by_node[("flip", unit)]["counts"] == "3/3 (0)"
        assert by_node[("averaging", unit)]["counts"] == "1/1 (0)"
    for task in tasks:
        assert attempts(cluster, task["id"]) == [1, 1, 1, 1], "nothing ran again"

    for set_number, unit in ((1, "set-1"), (2, "set-2")):
        stored = sorted(p.name for p in (cluster.datastore / unit / "L1").iterdir())
        assert stored == [f"nasa-logo-file-{i}-perm.png" for i in (1, 2, 3)]
        flipped = []
        for image in (1, 2, 3):
            permuted = pixels(set_number, image)[..., CHANNEL_ORDER]
            flipped += [np.fliplr(permuted), np.flipud(permuted)]
        expected = np.rint(np.mean(np.stack(flipped).astype(float), axis=0))
        with Image.open(cluster.datastore / unit / "L3" / "averaged-image.png") as image:
            np.testing.assert_array_equal(np.asarray(image), expected)


def test_restart_from_beginning_marshals_again_and_reruns_everything(cluster) -> None:
    instance, tasks = failing_instance(cluster, "--end-node", "permuter")
    first = tasks[0]
    before = {s["index"]: s["started_at"] for s in cluster.json("subtasks", first["id"])}
    extra = raw_image_path(cluster.datastore, "set-1", 4)
    shutil.copy(raw_image_path(cluster.datastore, "set-1", 3), extra)

    [outcome] = restart(cluster, first["id"], "--mode", "restart-from-beginning")
    assert outcome["start_from"] == "INITIALIZING" and outcome["subtasks"] == [0, 1, 2, 3]
    assert cluster.wait(instance).returncode == 1

    task = cluster.json("task", first["id"])
    assert (task["state"], task["counts"]) == ("ERROR - ALGORITHM_COMPLETE", "4/5 (1)")
    subtasks = cluster.json("subtasks", first["id"])
    assert [s["inputs"] for s in subtasks][-1] == ["nasa-logo-file-4.png"], "inputs looked up again"
    assert all(s["attempts"] == 1 for s in subtasks), "earlier outcomes forgotten"
    assert all(s["started_at"] >= before[0] for s in subtasks)
    assert [e["p_state"] for e in task["history"]].count("MARSHALING") == 2


def test_store_failure_resume_current_step_retries_and_resubmit_is_refused(cluster) -> None:
    blocker = cluster.datastore / "set-1" / "L1"
    blocker.write_text("not a directory")  # storing into set-1/L1 fails
    instance = cluster.submit("--end-node", "permuter")
    assert cluster.wait(instance).returncode == 1
    [task] = [t for t in cluster.tasks(instance) if t["error"]]
    assert task["state"] == "ERROR - STORING" and task["counts"] == "4/4 (0)"
    assert "storing failed" in task["error_message"]

    [refused] = restart(cluster, task["id"], "--mode", "resubmit", check=False)
    assert not refused["ok"]
    assert refused["message"] == (
        f"every subtask of task {task['id']} already succeeded: nothing to resubmit"
        " (restart-from-beginning runs them all again)"
    )
    blocker.unlink()
    restart(cluster, task["id"], "--mode", "resume-current-step")
    assert cluster.wait(instance).returncode == 0
    assert attempts(cluster, task["id"]) == [1, 1, 1, 1]
    assert len(list(blocker.iterdir())) == 4
    [other] = [t for t in cluster.tasks(instance) if t["id"] != task["id"]]
    [refused] = restart(cluster, other["id"], "--mode", "resubmit", check=False)
    assert refused["message"] == (
        f"task {other['id']} is complete without failures: only failed tasks can be restarted"
    )


def test_marshaling_failure_resume_current_step_marshals_again(cluster) -> None:
    # The first task's directory is taken by a file, so marshaling it fails.
    blocker = cluster.home / "tasks" / "1-1-permuter-attempt1"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("in the way")
    instance = cluster.submit("--end-node", "permuter")
    assert instance == 1
    assert cluster.wait(instance).returncode == 1
    task = cluster.json("task", 1)
    assert task["state"] == "ERROR - MARSHALING" and "marshaling failed" in task["error_message"]
    [refused] = restart(cluster, 1, "--mode", "resubmit", check=False)
    assert "failed while marshaling" in refused["message"]

    blocker.unlink()
    [outcome] = restart(cluster, 1, "--mode", "resume-current-step")
    assert outcome["start_from"] == "INITIALIZING"
    assert cluster.wait(instance).returncode == 0
    assert cluster.json("task", 1)["counts"] == "4/4 (0)"


def test_refusals_are_reported_and_the_valid_restarts_go_ahead(cluster) -> None:
    instance, tasks = failing_instance(cluster, "--end-node", "permuter")
    clean = cluster.submit("--end-node", "permuter")
    assert cluster.wait(clean).returncode == 1  # parameters still throw: make a complete task
    restart(cluster, "--instance", clean, "--mode", "resume-current-step")
    assert cluster.wait(clean).returncode == 0

    result = cluster.cli(
        "restart",
        f"{tasks[0]['id']}:resubmit",
        "999",
        "--mode",
        "resume-current-step",
        "--json",
        check=False,
    )
    assert result.returncode == 1
    outcomes = {o["task_id"]: o for o in json.loads(result.stdout)}
    assert outcomes[tasks[0]["id"]]["ok"] and outcomes[tasks[0]["id"]]["mode"] == "resubmit"
    assert outcomes[999] == {**outcomes[999], "ok": False, "message": "unknown task 999"}
    assert cluster.wait(instance).returncode == 1

    complete = cluster.tasks(clean)[0]["id"]
    [refused] = restart(cluster, complete, "--mode", "resume-current-step", check=False)
    assert "is COMPLETE: no step to resume" in refused["message"]

    before = cluster.json("task", tasks[1]["id"])
    [refused] = restart(
        cluster,
        tasks[1]["id"],
        "--mode",
        "resubmit",
        "--set",
        "throw_exception_subtask_0=false",
        check=False,
    )
    assert not refused["ok"]
    assert (
        "change the parameter set (pipeline params set) and submit a new instance"
        in (refused["message"])
    )
    assert cluster.json("task", tasks[1]["id"]) == before, "a refused restart changes nothing"

    bad = cluster.cli("restart", tasks[1]["id"], "--mode", "sideways", check=False)
    assert bad.returncode == 1 and "unknown restart mode 'sideways'" in bad.stdout + bad.stderr


def test_partial_success_with_max_failed_subtasks(cluster) -> None:
    instance, tasks = failing_instance(cluster)
    restart(cluster, "--instance", instance, "--mode", "resubmit", "--max-failed-subtasks", "1")
    assert cluster.wait(instance).returncode == 0
    for task in tasks:
        detail = cluster.json("task", task["id"])
        assert (detail["state"], detail["counts"]) == ("COMPLETE", "3/4 (1)")
        assert detail["execution"]["max_failed_subtasks"] == 1
        assert "restart: resubmit with max_failed_subtasks=1" in [
            e["message"] for e in detail["history"]
        ]
        assert attempts(cluster, task["id"]) == [2, 1, 1, 1]


def test_automatic_resubmits(cluster) -> None:
    instance, tasks = failing_instance(cluster, "--end-node", "permuter")
    restart(cluster, tasks[0]["id"], "--mode", "resubmit", "--max-auto-resubmits", "2")
    assert cluster.wait(instance).returncode == 1
    detail = cluster.json("task", tasks[0]["id"])
    assert detail["state"] == "ERROR - ALGORITHM_COMPLETE" and detail["attempt"] == 4
    messages = [e["message"] for e in detail["history"]]
    assert "automatic resubmit 1" in messages and "automatic resubmit 2" in messages
    assert attempts(cluster, tasks[0]["id"]) == [4, 1, 1, 1]


def test_halt_then_restart(cluster) -> None:
    # Long enough that neither task can finish before the halt, however busy the machine.
    cluster.cli("params", "set", "algorithm", "execution_pause_seconds=4")
    instance = cluster.submit("--end-node", "permuter")
    wait_for(
        lambda: any(s["state"] == "RUNNING" for t in (1, 2) for s in cluster.json("subtasks", t)),
        what="a subtask to run",
    )
    outcomes = json.loads(cluster.cli("halt", "--instance", instance, "--json").stdout)
    assert {o["task_id"] for o in outcomes if o["ok"]} == {1, 2}
    tasks = cluster.tasks(instance)
    assert all(
        t["error"] and t["halted"] and t["error_message"] == "halted by operator" for t in tasks
    )
    assert cluster.json("instances")[0]["state"] == "ERRORS_STALLED"
    task_dirs = [Path(cluster.json("task", t["id"])["task_dir"]) for t in tasks]
    wait_for(lambda: not algorithms_running_in(task_dirs), what="halted algorithms to stop")
    halted = {t["id"]: cluster.json("subtasks", t["id"]) for t in tasks}
    assert not any(s["state"] in ("QUEUED", "RUNNING") for subs in halted.values() for s in subs)

    [again] = json.loads(cluster.cli("halt", 1, "--json", check=False).stdout)
    assert not again["ok"] and "already stopped" in again["message"]

    # Halted wherever it was (marshaling, executing, storing), each task resumes from there.
    restart(cluster, "--instance", instance, "--mode", "resume-current-step")
    assert cluster.wait(instance).returncode == 0
    for task_id, subtasks in halted.items():
        old = {s["index"]: s for s in subtasks}
        for new in cluster.json("subtasks", task_id):
            before = old.get(new["index"], {"state": "NEW", "attempts": 0})
            assert new["state"] == "COMPLETE"
            rerun = 0 if before["state"] == "COMPLETE" else 1
            assert new["attempts"] == before["attempts"] + rerun, (task_id, before, new)
        history = [e["message"] for e in cluster.json("task", task_id)["history"]]
        assert "error: halted by operator" in history
        assert "restart: resume-current-step" in history


def algorithms_running_in(directories: list[Path]) -> bool:
    for proc in Path("/proc").iterdir():
        try:
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if any(cwd.startswith(str(d)) for d in directories):
            return True
    return False


@pytest.fixture
def operator_only(backend, request):
    """A started cluster whose monitor leaves quiet tasks alone for 10 minutes: what is
    lost stays lost until an operator resumes monitoring."""
    with started_cluster(backend, request, PIPELINE_STALE_AFTER="600") as made:
        yield made


def test_resume_monitoring_keeps_live_work_and_redispatches_lost_messages(
    operator_only, monkeypatch
) -> None:
    from pipeline import services

    cluster = operator_only
    broker = redis.Redis.from_url(cluster.process("redis")["url"])
    cluster.cli("params", "set", "algorithm", "execution_pause_seconds=3")
    instance = cluster.submit("--end-node", "permuter")
    cluster.activate(monkeypatch)  # poll the database directly: the window is a few seconds

    def queued_behind_running() -> bool:
        tasks = services.list_tasks(instance)
        executing = all(
            t["p_state"] in ("ALGORITHM_QUEUED", "ALGORITHM_EXECUTING") and t["total_subtasks"] == 4
            for t in tasks
        )
        states = [s["state"] for t in tasks for s in services.list_subtasks(t["id"])]
        return executing and states.count("QUEUED") >= 3

    wait_for(
        queued_behind_running,
        what="subtasks queued behind the running ones",
    )
    lost = sum(broker.delete(key) for key in broker.keys("default*"))  # the broker loses its queue
    assert lost

    outcomes = restart(cluster, "1", "2", "--mode", "resume-monitoring")
    redispatched = {o["task_id"]: o["subtasks"] for o in outcomes}
    assert sum(len(v) for v in redispatched.values()) >= 3
    assert cluster.wait(instance).returncode == 0
    for task_id in (1, 2):
        assert attempts(cluster, task_id) == [1, 1, 1, 1], "each subtask ran exactly once"
    assert len(list(cluster.datastore.glob("set-*/L1/*-perm.png"))) == 8


def test_resume_monitoring_on_healthy_work_changes_nothing(cluster) -> None:
    cluster.cli("params", "set", "algorithm", "execution_pause_seconds=1")
    instance = cluster.submit("--end-node", "permuter")
    wait_for(
        lambda: any(s["state"] == "RUNNING" for s in cluster.json("subtasks", 1)),
        what="a subtask to run",
    )
    [outcome] = restart(cluster, 1, "--mode", "resume-monitoring", check=False)
    if outcome["ok"]:  # the task may finish before the call: then it is refused as not executing
        assert outcome["subtasks"] == [] and "0 lost" in outcome["message"]
    assert cluster.wait(instance).returncode == 0
    assert attempts(cluster, 1) == [1, 1, 1, 1]


#: Runs the CLI once the gate file exists, after saying it is ready: every process is
#: imported and waiting before any of them restarts.
GATED_CLI = """
import os, sys, time
from pipeline.cli import main
gate = sys.argv[1]
open(f"{gate}.ready.{os.getpid()}", "w").close()
while not os.path.exists(gate):
    time.sleep(0.002)
sys.argv = ["pipeline", *sys.argv[2:]]
main()
"""


@pytest.mark.parametrize("backend", ["postgres"])
def test_ten_concurrent_restarts_start_one_chain(cluster, tmp_path) -> None:
    cluster.cli("params", "set", "algorithm", "execution_pause_seconds=2")
    instance, tasks = failing_instance(cluster, "--end-node", "permuter")
    task_id = tasks[0]["id"]
    gate = tmp_path / "gate"
    command = [
        sys.executable,
        "-c",
        GATED_CLI,
        str(gate),
        "restart",
        str(task_id),
        "--mode",
        "resubmit",
        "--json",
    ]
    processes = [
        subprocess.Popen(
            command, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(10)
    ]
    wait_for(lambda: len(list(tmp_path.glob("gate.ready.*"))) == 10, what="ten ready processes")
    gate.touch()
    results = [json.loads(p.communicate(timeout=120)[0])[0] for p in processes]
    assert sum(r["ok"] for r in results) == 1, results
    refused = {r["message"] for r in results if not r["ok"]}
    assert refused == {
        f"task {task_id} is running (ALGORITHM_SUBMITTING): only failed tasks can be restarted"
    } or all("is running" in message for message in refused), refused
    assert cluster.wait(instance).returncode == 1
    detail = cluster.json("task", task_id)
    assert detail["attempt"] == 2
    assert [e["message"] for e in detail["history"]].count("restart: resubmit") == 1
    assert attempts(cluster, task_id) == [2, 1, 1, 1]


def test_transition_failed_is_restarted_by_retrying_the_transition(cluster, tmp_path) -> None:
    """flip reads a data file type nothing produces: creating its tasks fails until it exists."""
    from config.settings import PACKAGED_DEFINITIONS

    text = (PACKAGED_DEFINITIONS / "sample.yaml").read_text()
    text = (
        text.replace("name: sample", "name: chain")
        .replace("    inputs: [permuted_image]", "    inputs: [extra_image]")
        .replace(
            "data_file_types:\n",
            'data_file_types:\n  extra_image: {location: "{dataset}/EXTRA", pattern: "*.png"}\n',
        )
    )
    definition = tmp_path / "chain.yaml"
    definition.write_text(text)
    cluster.cli("definitions", "import", definition)
    instance = int(cluster.json("submit", "chain")["id"])
    assert cluster.wait(instance).returncode == 1
    [summary] = cluster.json("instances")
    assert summary["state"] == "TRANSITION_FAILED"
    assert "node 'flip' finds no extra_image files" in summary["message"]

    extra = cluster.datastore / "set-1" / "EXTRA"
    extra.mkdir()
    shutil.copy(raw_image_path(cluster.datastore, "set-1", 0), extra / "a-perm.png")
    [outcome] = restart(cluster, "--instance", instance, "--mode", "resubmit")
    assert outcome["mode"] == "retry-transition" and outcome["ok"]
    assert cluster.wait(instance).returncode == 0
    nodes = sorted((t["node"], t["unit_of_work"]) for t in cluster.tasks(instance))
    assert ("flip", "set-1") in nodes and ("flip", "set-2") not in nodes


#: An algorithm with a bug in subtask 0, and the same module once the bug is fixed.
BROKEN_ALGORITHM = """
from config.sample.algorithms import permuter


def permute(ctx):
    if ctx.index == 0:
        raise RuntimeError("bug in subtask 0")
    permuter(ctx)
"""
FIXED_ALGORITHM = "from config.sample.algorithms import permuter as permute\n"


def test_resubmit_after_a_code_fix_runs_the_fixed_code(backend, request, tmp_path) -> None:
    """Ziggy's page: fix the software, resubmit. Only the failed subtask runs again, and it
    runs the fixed module on the same workers, which were never restarted."""
    from config.settings import PACKAGED_DEFINITIONS

    code = tmp_path / "code"
    code.mkdir()
    (code / "fixable.py").write_text(BROKEN_ALGORITHM)
    definition = tmp_path / "fixable.yaml"
    definition.write_text(
        (PACKAGED_DEFINITIONS / "sample.yaml")
        .read_text()
        .replace("name: sample", "name: fixable")
        .replace("config.sample.algorithms:permuter", "fixable:permute")
    )
    with started_cluster(backend, request, PYTHONPATH=str(code)) as cluster:
        cluster.cli("definitions", "import", definition)
        worker = cluster.pid("worker1")
        instance = int(cluster.json("submit", "fixable", "--end-node", "permuter")["id"])
        assert cluster.wait(instance).returncode == 1
        tasks = cluster.tasks(instance)
        assert {(t["state"], t["counts"]) for t in tasks} == {
            ("ERROR - ALGORITHM_COMPLETE", "3/4 (1)")
        }
        assert cluster.json("subtasks", tasks[0]["id"])[0]["error"] == (
            "RuntimeError: bug in subtask 0"
        )

        (code / "fixable.py").write_text(FIXED_ALGORITHM)
        outcomes = restart(cluster, "--instance", instance, "--mode", "resubmit")
        assert [o["subtasks"] for o in outcomes] == [[0], [0]]
        assert cluster.wait(instance).returncode == 0

        assert cluster.pid("worker1") == worker, "the same worker ran the fixed code"
        for task in tasks:
            assert attempts(cluster, task["id"]) == [2, 1, 1, 1]
        for set_number, set_name in enumerate(("set-1", "set-2"), start=1):
            stored = cluster.datastore / set_name / "L1" / "nasa-logo-file-0-perm.png"
            expected = pixels(set_number, 0)[..., CHANNEL_ORDER]
            with Image.open(stored) as image:
                np.testing.assert_array_equal(np.asarray(image.convert("RGB")), expected)
