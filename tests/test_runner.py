"""The runner: algorithms run in their subtask directory, output captured, failures and
timeouts recorded; a batch's crash or hang fails only its own subtask."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.domain.context import SubtaskContext
from pipeline.engine import runner
from pipeline.engine.runner import run, run_many
from pipeline.engine.taskdir import LOG_NAME


@pytest.fixture
def ctx(tmp_path: Path) -> SubtaskContext:
    directory = tmp_path / "st-0"
    directory.mkdir()
    (directory / "input.txt").write_text("data")
    return SubtaskContext(
        directory=directory,
        inputs=[directory / "input.txt"],
        parameters={"gain": 2},
        index=0,
        unit_of_work="set-1",
        node="node",
    )


def log_of(ctx: SubtaskContext) -> str:
    return (ctx.directory / LOG_NAME).read_text()


def test_callable_runs_in_its_directory_with_output_captured(ctx: SubtaskContext) -> None:
    outcome = run("tests.algorithms:echo", ctx, timeout=30)
    assert outcome.ok, outcome.error
    assert (ctx.directory / "input-echo.txt").read_text() == "{'gain': 2}"
    log = log_of(ctx)
    assert "stdout of subtask 0: ['input.txt']" in log
    assert "stderr line" in log
    assert "from a child process" in log


def test_callable_exception_fails_the_subtask(ctx: SubtaskContext) -> None:
    outcome = run("tests.algorithms:boom", ctx, timeout=30)
    assert not outcome.ok and outcome.error == "ValueError: boom in subtask 0"
    assert "Traceback" in log_of(ctx)


@pytest.mark.slow  # waits for a timeout
def test_callable_killed_at_timeout(ctx: SubtaskContext) -> None:
    started = time.monotonic()
    outcome = run("tests.algorithms:hang", ctx, timeout=1)
    assert not outcome.ok and outcome.timed_out
    assert outcome.error == "timeout: killed after 1 s"
    assert time.monotonic() - started < 30
    assert "hanging" in log_of(ctx)


def test_callable_exiting_hard(ctx: SubtaskContext) -> None:
    outcome = run("tests.algorithms:hard_exit", ctx, timeout=30)
    assert not outcome.ok
    assert outcome.error == "exit status 3: exiting hard"


def test_a_child_failing_outside_the_algorithm_says_why_in_the_error_and_the_log(
    ctx: SubtaskContext,
) -> None:
    """The algorithm's process failing in the pipeline's own code around it (here, its
    outcome cannot be sent back) ends with a non-zero status and the exception's last line
    as the error, its traceback in the subtask's log: not 'exit status 0' and nothing."""
    outcome = run("tests.algorithms:closes_every_file", ctx, timeout=30)
    assert not outcome.ok
    assert outcome.error == "exit status 1: OSError: [Errno 9] Bad file descriptor"
    assert "Traceback" in log_of(ctx)


def test_an_algorithm_ending_without_a_word_on_a_full_file_system_is_said_to(
    ctx: SubtaskContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An algorithm whose log cannot be written (the disk is full) ends without an outcome
    or a line: its error names the full file system, not a bare exit status."""
    assert run("tests.algorithms:silent_exit", ctx, timeout=30).error == "exit status 0"
    full = os.statvfs_result((4096, 4096, 1000, 0, 0, 1000, 0, 0, 0, 255))
    monkeypatch.setattr(runner.os, "statvfs", lambda path: full)
    outcome = run("tests.algorithms:silent_exit", ctx, timeout=30)
    assert outcome.error == (
        f"exit status 0: No space left on device (the file system of {ctx.directory} is full)"
    )


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "algorithm.sh"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_executable_gets_parameters_and_inputs(ctx: SubtaskContext, tmp_path: Path) -> None:
    program = script(
        tmp_path,
        'echo "index $PIPELINE_SUBTASK_INDEX unit $PIPELINE_UNIT_OF_WORK"\n'
        "cat parameters.json > out.json\ncat inputs.json\n",
    )
    outcome = run({"executable": program, "args": []}, ctx, timeout=30)
    assert outcome.ok, outcome.error
    assert json.loads((ctx.directory / "out.json").read_text()) == {"gain": 2}
    assert "index 0 unit set-1" in log_of(ctx)
    assert '["input.txt"]' in log_of(ctx)


def test_executable_non_zero_exit(ctx: SubtaskContext, tmp_path: Path) -> None:
    program = script(tmp_path, "echo 'cannot read input' >&2\nexit 4\n")
    outcome = run({"executable": program, "args": []}, ctx, timeout=30)
    assert not outcome.ok and outcome.error == "exit status 4: cannot read input"


@pytest.mark.slow  # waits for a timeout
def test_executable_timeout(ctx: SubtaskContext, tmp_path: Path) -> None:
    program = script(tmp_path, "sleep 3600\n")
    outcome = run({"executable": program, "args": []}, ctx, timeout=0.5)
    assert outcome.timed_out and outcome.error == "timeout: killed after 0.5 s"


def test_executable_missing(ctx: SubtaskContext) -> None:
    outcome = run({"executable": "/nonexistent/program", "args": []}, ctx, timeout=5)
    assert not outcome.ok and outcome.error.startswith("cannot start /nonexistent/program")


def contexts(tmp_path: Path, count: int) -> list[SubtaskContext]:
    made = []
    for index in range(count):
        directory = tmp_path / f"st-{index}"
        directory.mkdir()
        made.append(SubtaskContext(directory, [], {}, index, "set-1", "node"))
    return made


@pytest.mark.slow  # waits for a timeout
def test_a_crash_or_hang_in_a_batch_fails_only_its_subtask(tmp_path: Path) -> None:
    batch = contexts(tmp_path, 6)
    outcomes = list(run_many("tests.algorithms:fail_by_index", batch, timeout=2))
    assert [o.ok for o in outcomes] == [True, False, False, False, True, True]
    assert outcomes[1].error.startswith("exit status 3")
    assert outcomes[2].timed_out
    assert outcomes[3].error == "ValueError: boom in subtask 3"
    for ctx in batch:  # each subtask's output in its own log
        assert (ctx.directory / LOG_NAME).read_text().startswith(f"subtask {ctx.index}\n")
    # Subtasks 0 and 4 ran in different children: the crash of 1 and the hang of 2 were
    # followed by new ones; 4 and 5 shared one.
    pids = [(ctx.directory / "done.txt").read_text() for ctx in (batch[0], batch[4], batch[5])]
    assert pids[0] != pids[1] == pids[2]


@pytest.mark.slow  # waits for a timeout
def test_a_hang_is_timed_out_whatever_the_size_of_the_subtasks_sent_after_it(
    tmp_path: Path,
) -> None:
    """A child is sent the next subtasks while it runs one, never so many that the worker
    would wait on a full pipe instead of watching the clock: subtasks whose parameters
    are larger than a pipe holds still run, and a hang among them still times out."""
    batch = [replace(ctx, parameters={"blob": "x" * 100_000}) for ctx in contexts(tmp_path, 6)]
    outcomes = list(run_many("tests.algorithms:fail_by_index", batch, timeout=2))
    assert [o.ok for o in outcomes] == [True, False, False, False, True, True]
    assert outcomes[2].timed_out


def test_a_callable_is_imported_from_the_definitions_python_path(
    ctx: SubtaskContext, tmp_path: Path
) -> None:
    """The module is on the child's path only, never on the worker's."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "usermod_only_here.py").write_text(
        "def run(ctx):\n    (ctx.directory / 'out.txt').write_text(str(ctx.index))\n"
    )
    outcome = run("usermod_only_here:run", ctx, timeout=30, python_path=[str(code)])
    assert outcome.ok, outcome.error
    assert (ctx.directory / "out.txt").read_text() == "0"
    assert str(code) not in sys.path and "usermod_only_here" not in sys.modules
    missing = run("usermod_only_here:run", ctx, timeout=30)
    assert not missing.ok and "No module named 'usermod_only_here'" in missing.error


# -- kept and spare children -----------------------------------------------------------------

PID_ALGORITHM = (
    "import os\ndef run(ctx):\n    (ctx.directory / 'pid').write_text(str(os.getpid()) + ' {}')\n"
)


@pytest.fixture
def pid_code(tmp_path: Path) -> Path:
    """A module whose algorithm writes its process id and its version beside its outputs."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "whoami_mod.py").write_text(PID_ALGORITHM.format("v1"))
    return code


def ran(code: Path, tmp_path: Path, name: str, scope: object) -> list[str]:
    """Run two subtasks of ``scope``; what each wrote (process id and version)."""
    (tmp_path / name).mkdir()
    batch = contexts(tmp_path / name, 2)
    outcomes = list(run_many("whoami_mod:run", batch, 30, python_path=[str(code)], scope=scope))
    assert all(o.ok for o in outcomes), outcomes
    return [(ctx.directory / "pid").read_text() for ctx in batch]


def test_a_scopes_next_subtasks_run_in_the_child_it_kept(pid_code: Path, tmp_path: Path) -> None:
    """Forking a worker costs milliseconds: the same instance's node keeps its child."""
    first = ran(pid_code, tmp_path, "a", ("db", 1, "node"))
    again = ran(pid_code, tmp_path, "b", ("db", 1, "node"))
    assert len(set(first + again)) == 1, "one child ran both messages' subtasks"


def test_a_child_never_runs_two_scopes_or_unscoped_subtasks(pid_code: Path, tmp_path: Path) -> None:
    """The subtasks of two instances never share a process's memory."""
    one = ran(pid_code, tmp_path, "a", ("db", 1, "node"))
    other = ran(pid_code, tmp_path, "b", ("db", 2, "node"))
    back = ran(pid_code, tmp_path, "c", ("db", 1, "node"))
    unscoped = ran(pid_code, tmp_path, "d", None)
    unscoped_again = ran(pid_code, tmp_path, "e", None)
    pids = [one[0], other[0], back[0], unscoped[0], unscoped_again[0]]
    assert len(set(pids)) == 5, pids


def test_a_fixed_algorithm_runs_at_the_next_subtask_in_a_new_child(
    pid_code: Path, tmp_path: Path
) -> None:
    """Fix, then resubmit: a kept child whose algorithm's code changed is not reused."""
    before = ran(pid_code, tmp_path, "a", ("db", 1, "node"))
    module = pid_code / "whoami_mod.py"
    module.write_text(PID_ALGORITHM.format("v2 fixed"))
    after = ran(pid_code, tmp_path, "b", ("db", 1, "node"))
    assert before[0].endswith(" v1") and after[0].endswith(" v2 fixed")
    assert before[0].split()[0] != after[0].split()[0]


def test_a_spare_child_forked_while_idle_runs_the_next_subtasks(
    pid_code: Path, tmp_path: Path
) -> None:
    from pipeline.engine import runner

    ran(pid_code, tmp_path, "a", None)  # this process has run an algorithm
    runner.prepare_spare()
    assert runner._spare is not None
    spare = runner._spare.pid
    assert ran(pid_code, tmp_path, "b", ("db", 3, "node"))[0].split()[0] == str(spare)
    assert runner._spare is None


def test_a_child_holds_none_of_the_workers_open_files(ctx: SubtaskContext, tmp_path: Path) -> None:
    """A database or broker connection of the worker is not kept open by its algorithm."""
    held = (tmp_path / "held.txt").open("w")
    try:
        outcome = run("tests.algorithms:list_open_files", ctx, timeout=30)
    finally:
        held.close()
    assert outcome.ok, outcome.error
    open_files = json.loads((ctx.directory / "open-files.json").read_text())
    assert str(tmp_path / "held.txt") not in open_files


def test_a_subtask_whose_task_moved_on_is_stopped_at_its_lease_renewal(
    tmp_path: Path,
) -> None:
    """A halt cannot terminate a message other tasks share: the renewal that finds the
    subtask no longer its worker's (it returns False) stops it, and the rest of the batch."""
    from pipeline.engine.leases import LeaseRenewal
    from pipeline.engine.runner import STOPPED

    batch = contexts(tmp_path, 2)
    beat = LeaseRenewal(lambda: False, 0.05)  # every renewal finds the subtask no longer ours
    outcomes = list(run_many("tests.algorithms:hang", batch, 20, beat))
    assert [(o.ok, o.error, o.timed_out) for o in outcomes] == [(False, STOPPED, False)]
    assert "hanging" in log_of(batch[0]) and not (batch[1].directory / LOG_NAME).exists()


PARENT_ALGORITHM = """import os, time
def run(ctx):
    (ctx.directory / 'parents').write_text(f'{os.getpid()} {os.getppid()}')
    time.sleep(float(ctx.parameters.get('sleep', 0)))
"""


def process_state(pid: int) -> str:
    """The state letter of a process (Z: a zombie), or '' when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def test_children_are_forked_by_the_fork_server_not_by_the_worker(
    ctx: SubtaskContext, tmp_path: Path
) -> None:
    """A child that shares the worker's memory makes the worker copy every page it writes
    afterwards (milliseconds on each next transaction): children come from the worker's
    fork server, a child of its own forked once."""
    import os

    (tmp_path / "parents_mod.py").write_text(PARENT_ALGORITHM)
    outcome = run("parents_mod:run", ctx, timeout=30, python_path=[str(tmp_path)])
    assert outcome.ok, outcome.error
    child, parent = (int(pid) for pid in (ctx.directory / "parents").read_text().split())
    assert parent != os.getpid()
    status = Path(f"/proc/{parent}/status").read_text()
    assert f"PPid:\t{os.getpid()}\n" in status, "the fork server is the worker's own child"


def test_an_algorithm_dies_with_its_worker(tmp_path: Path) -> None:
    """A killed worker leaves no algorithm running on in a subtask directory that a
    restart may reuse: its fork server dies with it, and the algorithm with the server."""
    import os
    import signal
    import subprocess

    from tests.support import wait_for

    (tmp_path / "parents_mod.py").write_text(PARENT_ALGORITHM)
    directory = tmp_path / "st-0"
    directory.mkdir()
    worker = (
        "import sys\nfrom pathlib import Path\n"
        "from pipeline.domain.context import SubtaskContext\n"
        "from pipeline.engine.runner import run\n"
        "ctx = SubtaskContext(directory=Path(sys.argv[1]), inputs=[], "
        "parameters={'sleep': 600}, index=0, unit_of_work='u', node='n')\n"
        "run('parents_mod:run', ctx, timeout=900, python_path=[sys.argv[2]])\n"
    )
    process = subprocess.Popen([sys.executable, "-c", worker, str(directory), str(tmp_path)])
    try:
        found = wait_for(lambda: (directory / "parents").exists(), 60, "the algorithm")
        assert found
        child, server = (int(pid) for pid in (directory / "parents").read_text().split())
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        for pid in (server, child):
            wait_for(lambda pid=pid: process_state(pid) in ("", "Z"), 30, f"process {pid} gone")
    finally:
        process.kill()
        process.wait()


def test_a_report_cut_short_by_the_childs_death_reads_as_its_exit() -> None:
    """The fork server's exit line follows whatever a killed child left of its report;
    an algorithm's error text that looks like one is still the algorithm's error."""
    from pipeline.engine.forkserver import exit_status

    assert exit_status(b'{"outcome": {"ok": tr{"exit": 9}') == 9
    error_like_an_exit = json.dumps({"outcome": {"ok": False, "error": '{"exit": 3}'}})
    assert exit_status(error_like_an_exit.encode()) is None
