"""The code version of every task attempt, in this process: a Python step in a git working
tree is recorded with its commit and whether the tree was modified, an executable with its
SHA-256, this product's version with both; a restart whose code differs from the attempt
it continues says so in its dry-run preview and in the task's history."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import yaml

from pipeline.engine.code_version import differences
from pipeline.operations import facade, queries
from pipeline.operations.receipt import receive
from tests.support import InProcessWorker

FAILING = "def run(ctx):\n    raise RuntimeError('not yet')\n"
FIXED = "def run(ctx):\n    (ctx.directory / (ctx.inputs[0].stem + '-out.txt')).write_text('ok')\n"


def git(repository: Path, *args: str) -> str:
    command = ["git", "-C", str(repository), "-c", "user.name=t", "-c", "user.email=t@example"]
    return subprocess.run([*command, *args], check=True, capture_output=True, text=True).stdout


def user_pipeline(repository: Path, algorithm: object) -> None:
    spec = {
        "name": "mine",
        "data_file_types": {
            "raw": {"location": "{unit}/raw", "pattern": "*.txt"},
            "out": {"location": "{unit}/out", "pattern": "*-out.txt"},
        },
        "nodes": [{"name": "step", "algorithm": algorithm, "inputs": ["raw"], "outputs": ["out"]}],
    }
    (repository / "mine.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    facade.import_definitions([repository / "mine.yaml"])


def some_input(tmp_path: Path) -> None:
    delivery = tmp_path / "delivery"
    delivery.mkdir()
    (delivery / "a.txt").write_text("1")
    receive(delivery, "raw", "u1")


def failed_then_fixed(tmp_path: Path, worker: InProcessWorker) -> tuple[dict[str, Any], str, str]:
    """A task of a Python step in a git working tree that failed on its first commit, the
    step fixed in a second since: the task, and the two commits."""
    repository = tmp_path / "repo"
    repository.mkdir()
    git(repository, "init", "-q")
    (repository / "usersteps.py").write_text(FAILING)
    git(repository, "add", ".")
    git(repository, "commit", "-qm", "first")
    before = git(repository, "rev-parse", "HEAD").strip()
    user_pipeline(repository, "usersteps:run")
    some_input(tmp_path)

    instance = facade.submit("mine")["id"]
    worker.drain()
    [task] = queries.list_tasks(instance)
    assert task["error"], task
    [first] = queries.get_task(task["id"])["attempts"]
    assert first["code"]["git_commit"] == before and first["code"]["git_modified"] is False
    assert first["code"]["module"] == "usersteps" and first["code"]["product"]

    (repository / "usersteps.py").write_text(FIXED)
    git(repository, "commit", "-qam", "fixed")
    return task, before, git(repository, "rev-parse", "HEAD").strip()


def test_a_restart_on_changed_code_says_so_and_each_attempt_records_its_commit(
    home: Path, tmp_path: Path, worker: InProcessWorker
) -> None:
    task, before, after = failed_then_fixed(tmp_path, worker)
    preview = facade.restart([task["id"]], "restart-from-beginning", dry_run=True)
    [planned] = preview.outcomes
    assert f"code changed: module usersteps, git {before[:10]}" in planned.message
    assert f"git {after[:10]}" in planned.message and "(since attempt 1)" in planned.message

    assert facade.restart([task["id"]], "restart-from-beginning").ok
    worker.drain()
    detail = queries.get_task(task["id"])
    assert detail["state"] == "COMPLETE", detail["error_message"]
    assert [a["code"]["git_commit"] for a in detail["attempts"]] == [before, after]
    said = [e["message"] for e in detail["history"] if "code changed" in e["message"]]
    assert len(said) == 1 and after[:10] in said[0], detail["history"]


def test_a_resubmit_on_changed_code_runs_the_failed_subtasks_again(
    home: Path, tmp_path: Path, worker: InProcessWorker
) -> None:
    """Fix the step, resubmit: the failed subtask runs again, on the new code, and the
    task completes (the history says the code changed, and the subtasks still go back to
    NEW: not "no subtasks left to run")."""
    task, _, after = failed_then_fixed(tmp_path, worker)
    [outcome] = facade.restart([task["id"]], "resubmit").outcomes
    assert outcome.ok and outcome.subtasks == [0], outcome
    worker.drain()
    detail = queries.get_task(task["id"])
    assert detail["state"] == "COMPLETE", detail["history"]
    assert [s["attempts"] for s in queries.list_subtasks(task["id"])] == [2]
    assert detail["attempts"][-1]["code"]["git_commit"] == after


def test_a_tree_modified_since_its_commit_is_other_code() -> None:
    committed = {"module": "m", "git_commit": "a" * 40, "git_modified": False, "product": "1"}
    edited = {**committed, "git_modified": True}
    assert "(modified)" in differences(committed, edited)
    assert differences(committed, dict(committed)) == ""
    assert differences({}, edited) == "", "nothing recorded before: nothing to compare"


def test_an_executable_is_recorded_by_its_checksum(
    home: Path, tmp_path: Path, worker: InProcessWorker
) -> None:
    program = tmp_path / "bin" / "step.sh"
    program.parent.mkdir()
    program.write_text('#!/bin/sh\nfor f in $(ls *.txt); do echo ok > "${f%.txt}-out.txt"; done\n')
    program.chmod(0o755)
    user_pipeline(tmp_path, {"executable": str(program)})
    some_input(tmp_path)
    instance = facade.submit("mine")["id"]
    worker.drain()
    [task] = queries.list_tasks(instance)
    [ran] = queries.get_task(task["id"])["attempts"]
    assert ran["code"]["sha256"] == hashlib.sha256(program.read_bytes()).hexdigest()
    assert "step.sh sha256" in ran["code_version"]
