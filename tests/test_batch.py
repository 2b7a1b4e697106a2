"""A node on a batch system, in the test's own process: the product's in-memory batch
system (``MemoryBatchSystem``) runs each job array's elements through the compute node's
own entry point, and beat's reconciler follows the jobs with one query per cycle. The
same against a real Slurm is ``test_slurm.py``; Slurm's own parsing is tested here too."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.engine import batch_system
from pipeline.engine.batch_memory import MemoryBatchSystem
from pipeline.engine.batch_system import ArrayRequest
from pipeline.engine.slurm import elapsed_seconds, parse_squeue_line, sbatch_arguments
from pipeline.errors import InvalidInput, NotFound, Refused
from pipeline.operations import facade, queries, views
from pipeline.recovery import reconcile
from pipeline.settings import reload_settings
from tests.support import REPO, InProcessWorker, assert_one_line_error, run_cli

#: The sample, its permuter and flip on the batch system, 3 subtasks per array element.
BATCH_NODES = ("permuter", "flip")


#: Remote environments (Ziggy's), declared with ``sample-batch``: a Slurm centre, and a
#: PBS one, which imports but runs nothing here.
ENVIRONMENTS = {
    "centre": {
        "batch_system": "slurm",
        "cost_unit": "SBU",
        "description": "A Slurm centre",
        "architectures": {
            "small": {"description": "Small", "cores": 4, "ram_gigabytes": 8, "cost": 1.5},
            "big": {"description": "Big", "cores": 16, "ram_gigabytes": 64, "cost": 4},
        },
        "queues": {
            "short": {"description": "Short", "max_wall_time_hours": 2},
            "long": {"description": "Long", "max_wall_time_hours": 24, "max_nodes": 8},
            "debug": {"max_wall_time_hours": 1, "auto_selectable": False},
            "special": {"reserved": True, "auto_selectable": False},
        },
    },
    "pbs-centre": {
        "batch_system": "pbs",
        "description": "A PBS centre",
        "architectures": {"vax": {"cores": 4, "ram_gigabytes": 1, "cost": 1}},
        "queues": {"dec": {"max_wall_time_hours": 8}},
    },
}


@contextmanager
def batch_nodes(tmp_path: Path, permuter: str = "", **declared: Any) -> Iterator[MemoryBatchSystem]:
    """The sample as ``sample-batch`` (permuter, its algorithm ``permuter`` if given and
    what else is ``declared`` of it, and flip with ``executor: slurm``), with remote
    environments, imported, with an in-memory batch system installed."""
    definition = yaml.safe_load((REPO / "config" / "pipelines" / "sample.yaml").read_text())
    definition["name"] = "sample-batch"
    definition["remote_environments"] = ENVIRONMENTS
    for node in definition["nodes"]:
        if node["name"] in BATCH_NODES:
            node["execution"] = {"executor": "slurm", "batch": {"subtasks_per_job": 3}}
        if node["name"] == "permuter" and permuter:
            node["algorithm"] = permuter
        if node["name"] == "permuter":
            node.update(declared)
    path = tmp_path / "sample-batch.yaml"
    path.write_text(yaml.safe_dump(definition))
    facade.import_definitions([path])
    system = MemoryBatchSystem()
    replaced = batch_system.use(system)
    try:
        yield system
    finally:
        batch_system.use(replaced)


@pytest.fixture
def slurm(home: Path, worker: InProcessWorker, tmp_path: Path) -> Iterator[MemoryBatchSystem]:
    """``batch_nodes`` in a home of the test's own."""
    with batch_nodes(tmp_path) as system:
        yield system


def cycle(system: MemoryBatchSystem, worker: InProcessWorker) -> int:
    """One reconciler run, then the messages it called for; the queries it made."""
    before = system.queries
    reconcile.reconcile_once()
    worker.drain()
    return system.queries - before


def run_to_the_end(system: MemoryBatchSystem, worker: InProcessWorker, instance: int) -> list[int]:
    """Run every job and a monitor cycle until the instance stops; the queries of each
    cycle."""
    queried = []
    while queries.get_instance(instance)["state"] not in ("COMPLETED", "ERRORS_STALLED"):
        assert len(queried) < 10, queries.list_tasks(instance)
        system.run()
        queried.append(cycle(system, worker))
    return queried


def test_each_task_runs_as_one_job_array_and_the_instance_completes(
    slurm: MemoryBatchSystem, worker: InProcessWorker
) -> None:
    instance = facade.submit("sample-batch")["id"]
    worker.drain()
    assert "subtask" not in worker.names() and "subtasks" not in worker.names()
    arrays = [(job.request.elements, job.request.comment) for job in slurm.jobs.values()]
    assert [elements for elements, _ in arrays] == [2, 2], "4 subtasks, 3 a job: 2 elements"
    [task, *_] = queries.list_tasks(instance)
    assert task["p_state"] == "ALGORITHM_QUEUED"

    queried = run_to_the_end(slurm, worker, instance)
    assert set(queried) == {1}, "one query per cycle, whatever the number of jobs"
    assert len(slurm.jobs) == 4, "permuter and flip: one job array per task"
    tasks = {(t["node"], t["unit_of_work"]): t for t in queries.list_tasks(instance)}
    assert {key: t["counts"] for key, t in tasks.items()} == {
        ("permuter", "set-1"): "4/4 (0)",
        ("permuter", "set-2"): "4/4 (0)",
        ("flip", "set-1"): "4/4 (0)",
        ("flip", "set-2"): "4/4 (0)",
        ("averaging", "set-1"): "1/1 (0)",
        ("averaging", "set-2"): "1/1 (0)",
    }


def test_max_workers_bounds_the_elements_of_an_array_running_at_once(
    home: Path, worker: InProcessWorker, tmp_path: Path
) -> None:
    """Ziggy's ``maxWorkers`` on a batch system: the array runs at most that many elements
    at once (``%N``), or ``batch.max_jobs`` when that is fewer."""
    execution = {"executor": "slurm", "batch": {"subtasks_per_job": 1, "max_jobs": 3}}
    with batch_nodes(tmp_path, max_workers=2, execution=execution) as system:
        facade.submit("sample-batch")
        worker.drain()
        assert [job.request.max_running for job in system.jobs.values()] == [2, 2]
    execution["batch"]["max_jobs"] = 1
    with batch_nodes(tmp_path, max_workers=2, execution=execution) as system:
        facade.submit("sample-batch")
        worker.drain()
        assert {job.request.max_running for job in system.jobs.values()} == {1}


def test_a_job_ended_without_outcomes_runs_its_subtasks_again_or_fails_them(
    slurm: MemoryBatchSystem, worker: InProcessWorker
) -> None:
    instance = facade.submit("sample-batch", end_node="permuter")["id"]
    worker.drain()
    first, second = slurm.jobs
    slurm.end(first, "TIMEOUT", elements=[0])  # subtasks 0 to 2 of the first task
    slurm.run(first)
    cycle(slurm, worker)
    [rerun] = [job for job in slurm.jobs.values() if job.job_id not in (first, second)]
    assert rerun.request.elements == 1
    slurm.run()
    cycle(slurm, worker)
    assert queries.get_instance(instance)["state"] == "COMPLETED"
    [task, _] = queries.list_tasks(instance)
    assert task["counts"] == "4/4 (0)"
    assert [s["attempts"] for s in queries.list_subtasks(task["id"])] == [2, 2, 2, 1]
    [alert] = [a["message"] for a in queries.list_alerts() if "without outcomes" in a["message"]]
    assert alert == (
        "batch job 1 ended (COMPLETED, TIMEOUT) without outcomes for subtasks 0, 1, 2:"
        " 3 subtasks run again, 0 failed"
    )


def test_a_subtask_ended_by_the_batch_systems_signal_is_lost_not_failed(
    home: Path, worker: InProcessWorker, tmp_path: Path
) -> None:
    """Its algorithm's process killed by a SIGTERM from outside (at a walltime, the batch
    system signals every process of the job, the algorithm's maybe first): the element
    writes no outcome for it nor for the subtasks after it, and they run again."""
    with batch_nodes(tmp_path, permuter="tests.algorithms:ended_on_first_run") as system:
        instance = facade.submit("sample-batch", end_node="permuter")["id"]
        worker.drain()
        run_to_the_end(system, worker, instance)
        assert queries.get_instance(instance)["state"] == "COMPLETED"
        [task, _] = queries.list_tasks(instance)
        assert [s["attempts"] for s in queries.list_subtasks(task["id"])] == [2, 2, 2, 1]
        assert any(
            a["message"].endswith(
                "without outcomes for subtasks 0, 1, 2: 3 subtasks run again, 0 failed"
            )
            for a in queries.list_alerts()
        )


def test_halt_cancels_the_jobs_and_nothing_stays_in_the_queue(
    slurm: MemoryBatchSystem, worker: InProcessWorker
) -> None:
    instance = facade.submit("sample-batch", end_node="permuter")["id"]
    worker.drain()
    task_ids = [t["id"] for t in queries.list_tasks(instance)]
    facade.halt(task_ids)
    assert {state for job in slurm.jobs.values() for state in job.states} == {"CANCELLED"}
    cycle(slurm, worker)
    assert [t["state"] for t in queries.list_tasks(instance)] == ["ERROR - ALGORITHM_QUEUED"] * 2


def test_a_batch_system_that_does_not_answer_is_an_alert_and_loses_nothing(
    slurm: MemoryBatchSystem, worker: InProcessWorker
) -> None:
    instance = facade.submit("sample-batch", end_node="permuter")["id"]
    worker.drain()
    slurm.run()
    slurm.down = True
    cycle(slurm, worker)
    [alert] = [a for a in queries.list_alerts() if "slurm" in a["message"]]
    assert "Unable to contact slurm controller" in alert["message"]
    assert queries.get_instance(instance)["state"] == "PROCESSING"
    slurm.down = False
    cycle(slurm, worker)
    assert queries.get_instance(instance)["state"] == "COMPLETED"
    [alert] = [a for a in queries.list_alerts(True) if "slurm" in a["message"]]
    assert alert["cleared_at"] is not None


def test_the_cost_is_estimated_before_a_submit_from_earlier_runs_and_measured_after(
    slurm: MemoryBatchSystem, worker: InProcessWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPELINE_BATCH_COSTS", '{"": 2.0}')
    reload_settings()
    guessed = facade.preview_submit("sample-batch")["batch_estimates"]
    assert [(e["node"], e["jobs"], e["subtasks"], e["measured"]) for e in guessed] == [
        ("permuter", 2, 8, 0),
        ("flip", 2, 8, 0),
    ], "permuter's counted in the datastore, flip's as its parent's"
    assert guessed[0]["text"] == (
        "2 jobs, 8 subtasks, 1.33 node-hours, cost 2.67 (the default partition; 600 s a"
        " subtask, a guess (batch_guess_seconds): none of its jobs ended yet; subtasks"
        " counted in the datastore)"
    )
    assert guessed[1]["subtasks_from"] == "guessed from its parents' (not known until they ran)"

    instance = facade.submit("sample-batch")["id"]
    worker.drain()
    run_to_the_end(slurm, worker, instance)  # each element said to run 60 s
    [task, *_] = queries.list_tasks(instance)
    jobs = queries.get_task(task["id"])["batch_jobs"]
    assert [(job["node_hours"], job["cost"]) for job in jobs] == [
        (pytest.approx(120 / 3600), pytest.approx(2 * 120 / 3600))
    ], "2 elements of 60 s, priced by the default partition's rate"

    measured = facade.preview_submit("sample-batch")
    permuter, flip = measured["batch_estimates"]
    assert (permuter["seconds_per_subtask"], permuter["measured"]) == (30.0, 8)
    assert permuter["node_hours"] == pytest.approx(8 * 30 / 3600)
    assert flip["subtasks_from"] == "as many as its earlier tasks had"
    assert (
        "  permuter on slurm: 2 jobs, 8 subtasks, 0.0667 node-hours, cost 0.13 (the default"
        " partition; 30 s a subtask as measured over 8 subtasks run before; subtasks counted"
        " in the datastore)"
    ) in views.submit_preview_text(measured)

    shown = {(f.name, *s.labels.values()): s.value for f in batch_families() for s in f.samples}
    assert shown[("pipeline_batch_node_hours", "")] == pytest.approx(4 * 120 / 3600)
    assert shown[("pipeline_batch_cost", "")] == pytest.approx(2 * 4 * 120 / 3600)
    assert shown[("pipeline_batch_jobs", "ENDED")] == 4


def batch_families() -> list[Any]:
    """The pipeline's batch figures as ``/metrics`` shows them."""
    from pipeline.interfaces.prometheus import batch_metrics
    from pipeline.operations import pages

    return list(batch_metrics(pages.metrics()))


def test_a_restart_previews_its_cost_and_may_change_one_batch_setting(
    slurm: MemoryBatchSystem, worker: InProcessWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPELINE_BATCH_COSTS", '{"long": 5.0}')
    reload_settings()
    facade.set_parameters("algorithm", ["throw_exception_subtask_0=true"])
    instance = facade.submit("sample-batch", end_node="permuter")["id"]
    worker.drain()
    run_to_the_end(slurm, worker, instance)
    [task, _] = queries.list_tasks(instance)
    assert (task["state"], task["counts"]) == ("ERROR - ALGORITHM_COMPLETE", "3/4 (1)")

    change = {"batch.partition": "long", "batch.sbatch_options": "--qos=debug --exclusive"}
    [preview] = facade.restart([task["id"]], "resubmit", change, dry_run=True).outcomes
    assert preview.message == (
        "run failed and never-run subtasks; on slurm: 1 job, 1 subtask, 0.00833"
        " node-hours, cost 0.04 (partition long; 30 s a subtask as measured over 8 subtasks"
        " run before)"
    )
    facade.restart([task["id"]], "resubmit", change)
    worker.drain()
    rerun = list(slurm.jobs.values())[-1].request
    assert (rerun.partition, list(rerun.options)) == ("long", ["--qos=debug", "--exclusive"])
    assert queries.get_task(task["id"])["execution"]["batch"]["cores"] == 1, "the others kept"
    with pytest.raises(InvalidInput, match="execution setting batch.cores: Input should be"):
        facade.restart([task["id"]], "resubmit", {"batch.cores": "many"}, dry_run=True)


#: Permuter on the centre's big nodes in its long queue.
ON_CENTRE = {
    "permuter": {
        "batch.environment": "centre",
        "batch.architecture": "big",
        "batch.queue": "long",
        "batch.walltime": "10:00:00",
    }
}


def test_a_node_on_a_remote_environment_runs_on_its_queue_and_architecture_at_its_price(
    slurm: MemoryBatchSystem, worker: InProcessWorker, tmp_path: Path
) -> None:
    [estimate, _] = facade.preview_submit("sample-batch", settings=ON_CENTRE)["batch_estimates"]
    assert (estimate["node"], estimate["partition"]) == ("permuter", "long")
    assert "cost 5.33 SBU (partition long;" in estimate["text"], "8 x 600 s at 4 SBU a node-hour"

    both = {**ON_CENTRE, "flip": ON_CENTRE["permuter"]}
    instance = facade.submit("sample-batch", settings=both)["id"]
    worker.drain()
    request = next(iter(slurm.jobs.values())).request
    assert (request.partition, request.cores, request.memory_gb) == ("long", 16, 64)
    assert request.walltime == "10:00:00"
    assert request.max_running == 8, "the queue's maxNodes: elements running at once"
    [task, *_] = queries.list_tasks(instance)
    batch = queries.get_task(task["id"])["execution"]["batch"]
    assert {k: batch[k] for k in ("environment", "architecture", "queue")} == {
        "environment": "centre",
        "architecture": "big",
        "queue": "long",
    }
    assert (batch["cost_per_node_hour"], batch["cost_unit"]) == (4, "SBU")

    # declared again with bigger nodes: the instance keeps what its submit resolved
    path = tmp_path / "sample-batch.yaml"
    definition = yaml.safe_load(path.read_text())
    definition["remote_environments"]["centre"]["architectures"]["big"]["cores"] = 32
    path.write_text(yaml.safe_dump(definition))
    facade.import_definitions([path])
    run_to_the_end(slurm, worker, instance)
    flips = [job.request for job in slurm.jobs.values() if "flip" in str(job.request.directory)]
    assert [r.cores for r in flips] == [16, 16], "flip's tasks, created later, as frozen"
    jobs = queries.get_task(task["id"])["batch_jobs"]
    assert [job["cost"] for job in jobs] == [pytest.approx(4 * 120 / 3600)], "4 SBU a node-hour"


def test_a_queue_not_named_is_the_shortest_auto_selectable_one_the_walltime_fits(
    slurm: MemoryBatchSystem, worker: InProcessWorker
) -> None:
    chosen = {"permuter": {"batch.environment": "centre", "batch.architecture": "small"}}
    facade.submit("sample-batch", end_node="permuter", settings=chosen)
    worker.drain()
    request = next(iter(slurm.jobs.values())).request
    assert (request.partition, request.cores, request.memory_gb) == ("short", 4, 8)


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        (
            {"batch.walltime": "30:00:00"},
            InvalidInput,
            "batch.walltime 30:00:00: over queue 'long''s limit of 24 hours (remote"
            " environment 'centre')",
        ),
        (
            {"batch.queue": "special"},
            Refused,
            "queue 'special' of remote environment 'centre' is reserved",
        ),
        (
            {"batch.environment": "nowhere"},
            NotFound,
            "no remote environment 'nowhere' in any imported pipeline",
        ),
        (
            {"batch.architecture": "huge"},
            NotFound,
            "remote environment 'centre' has no architecture 'huge' (one of big, small)",
        ),
        (
            {"batch.queue": "never"},
            NotFound,
            "remote environment 'centre' has no queue 'never' (one of debug, long, short, special)",
        ),
        (
            {"batch.environment": "pbs-centre", "batch.architecture": "vax", "batch.queue": "dec"},
            Refused,
            "remote environment 'pbs-centre' runs on batch system 'pbs': only slurm is"
            " implemented here",
        ),
        (
            {"batch.cores": "2"},
            InvalidInput,
            "batch.cores: set by architecture 'big' of remote environment 'centre'",
        ),
        ({"batch.max_jobs": "9"}, InvalidInput, "batch.max_jobs 9: over queue 'long''s"),
        ({"executor": "celery"}, InvalidInput, "set executor=slurm"),
    ],
)
def test_a_remote_environment_refuses_what_it_cannot_run_in_one_line_and_nothing_starts(
    slurm: MemoryBatchSystem,
    settings: dict[str, str],
    error: type[Exception],
    message: str,
) -> None:
    chosen = {"permuter": {**ON_CENTRE["permuter"], **settings}}
    for dry_run in (True, False):
        with pytest.raises(error) as raised:
            (facade.preview_submit if dry_run else facade.submit)("sample-batch", settings=chosen)
        assert message in str(raised.value) and "\n" not in str(raised.value)
    assert queries.list_instances() == [] and slurm.jobs == {}


def test_a_restart_may_move_a_task_to_another_queue_of_its_environment(
    slurm: MemoryBatchSystem, worker: InProcessWorker
) -> None:
    facade.set_parameters("algorithm", ["throw_exception_subtask_0=true"])
    instance = facade.submit("sample-batch", end_node="permuter", settings=ON_CENTRE)["id"]
    worker.drain()
    run_to_the_end(slurm, worker, instance)
    [task, _] = queries.list_tasks(instance)

    [refused] = facade.restart([task["id"]], "resubmit", {"batch.queue": "short"}).outcomes
    assert not refused.ok
    assert "batch.walltime 10:00:00: over queue 'short''s limit of 2 hours" in refused.message
    change = {"batch.queue": "short", "batch.walltime": "01:30:00", "batch.architecture": "small"}
    [preview] = facade.restart([task["id"]], "resubmit", change, dry_run=True).outcomes
    assert "cost 0.01 SBU (partition short;" in preview.message, preview.message
    facade.restart([task["id"]], "resubmit", change)
    worker.drain()
    rerun = list(slurm.jobs.values())[-1].request
    assert (rerun.partition, rerun.cores, rerun.memory_gb) == ("short", 4, 8)
    pbs = {"batch.environment": "pbs-centre", "batch.architecture": "vax", "batch.queue": "dec"}
    [refused] = facade.restart([task["id"]], "resubmit", pbs).outcomes
    assert "batch system 'pbs': only slurm is implemented here" in refused.message
    with pytest.raises(NotFound, match="no remote environment 'elsewhere'"):
        facade.restart([task["id"]], "resubmit", {"batch.environment": "elsewhere"})


def test_the_cli_lists_remote_environments_and_submits_a_node_onto_one(
    slurm: MemoryBatchSystem, worker: InProcessWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    listed = run_cli(capsys, "environments", "--json")
    assert listed.returncode == 0, listed.stderr
    centre = next(e for e in json.loads(listed.stdout) if e["name"] == "centre")
    assert (centre["batch_system"], centre["cost_unit"], centre["pipelines"]) == (
        "slurm",
        "SBU",
        ["sample-batch"],
    )
    assert next(a for a in centre["architectures"] if a["name"] == "big") == {
        "name": "big",
        "description": "Big",
        "cores": 16,
        "ram_gigabytes": 64.0,
        "cost": 4.0,
        "bandwidth_gbps": None,
    }
    assert next(q for q in centre["queues"] if q["name"] == "special")["reserved"] is True
    table = run_cli(capsys, "environments")
    assert "pbs-centre" in table.stdout and "big" in table.stdout

    options = [f"--set=permuter:{k}={v}" for k, v in ON_CENTRE["permuter"].items()]
    submitted = run_cli(capsys, "submit", "sample-batch", "--end-node", "permuter", *options)
    assert submitted.returncode == 0, submitted.stderr
    worker.drain()
    assert next(iter(slurm.jobs.values())).request.partition == "long"
    refused = run_cli(
        capsys, "submit", "sample-batch", "--set", "permuter:batch.environment=pbs-centre"
    )
    assert_one_line_error(refused, "batch system 'pbs': only slurm is implemented here")
    unknown = run_cli(capsys, "submit", "sample-batch", "--set", "nobody:batch.queue=long")
    assert_one_line_error(unknown, "pipeline 'sample-batch' has no node 'nobody'")
    assert len(queries.list_instances()) == 1


# -- Slurm's commands, without a Slurm --------------------------------------------------------


def test_sbatch_is_asked_for_one_array_with_the_batch_settings(tmp_path: Path) -> None:
    request = ArrayRequest(
        name="pipeline-x",
        comment="token",
        command=["python", "-m", "element"],
        elements=200,
        directory=tmp_path,
        partition="long",
        account="science",
        cores=4,
        memory_gb=2.5,
        walltime="02:00:00",
        max_running=10,
        options=["--qos=debug"],
    )
    assert sbatch_arguments(request) == [
        "--parsable",
        "--job-name=pipeline-x",
        "--comment=token",
        "--array=0-199%10",
        f"--chdir={tmp_path}",
        f"--output={tmp_path}/element-%a.log",
        "--time=02:00:00",
        "--cpus-per-task=4",
        "--mem=2560M",
        "--partition=long",
        "--account=science",
        "--qos=debug",
    ]


def test_squeue_lines_are_read_as_elements_with_their_wait_and_run_times() -> None:
    now = datetime(2026, 12, 6, 17, 0, 0)
    running = parse_squeue_line(
        "12|3|RUNNING|1:02:03|2026-12-06T16:00:00|2026-12-06T16:00:30|None|debug|1|tok", now
    )
    assert (running.job_id, running.element, running.state, running.comment) == (
        "12",
        3,
        "RUNNING",
        "tok",
    )
    assert (running.elapsed, running.queued, running.active) == (3723.0, 30.0, True)
    pending = parse_squeue_line(
        "12|7|PENDING|0:00|2026-12-06T16:00:00|N/A|Resources|debug|1|tok", now
    )
    assert (pending.queued, pending.reason, pending.active) == (3600.0, "Resources", True)
    ended = parse_squeue_line("12|4|TIMEOUT|1-00:00:05|N/A|N/A|None|debug|2|tok", now)
    assert (ended.elapsed, ended.nodes, ended.active) == (86405.0, 2, False)
    assert [elapsed_seconds(t) for t in ("0:03", "INVALID", "10:00")] == [3.0, 0.0, 600.0]


def test_cluster_status_says_whether_the_batch_system_answers(
    home: Path, worker: InProcessWorker, tmp_path: Path
) -> None:
    assert facade.batch_system_status() is None, "no node runs on a batch system"
    with batch_nodes(tmp_path) as system:
        assert facade.batch_system_status() == {
            "name": "slurm",
            "pid": None,
            "alive": True,
            "url": None,
            "message": "in memory: UP",
        }
        system.down = True
        row = facade.batch_system_status()
        assert row is not None and row["alive"] is False
        assert row["message"] == "slurm: squeue: Unable to contact slurm controller"
