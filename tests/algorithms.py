"""Algorithms used by the tests (importable by the test cluster's workers via PYTHONPATH)."""

from __future__ import annotations

import os
import signal
import sys
import time

from pipeline.domain.context import SubtaskContext


def echo(ctx: SubtaskContext) -> None:
    print(f"stdout of subtask {ctx.index}: {[p.name for p in ctx.inputs]}")
    print("stderr line", file=sys.stderr)
    os.system("echo from a child process")  # noqa: S605 - proves fd-level capture
    for path in ctx.inputs:
        (ctx.directory / f"{path.stem}-echo.txt").write_text(str(ctx.parameters))


def boom(ctx: SubtaskContext) -> None:
    raise ValueError(f"boom in subtask {ctx.index}")


def hang(ctx: SubtaskContext) -> None:
    print("hanging", flush=True)
    time.sleep(3600)


def hang_in_subtask_0(ctx: SubtaskContext) -> None:
    """Hangs in subtask 0 (until the subtask timeout kills it); marks its inputs elsewhere."""
    if ctx.index == 0:
        hang(ctx)
    for path in ctx.inputs:
        (ctx.directory / f"{path.stem}-seen.txt").write_text(path.name)


def silent_exit(ctx: SubtaskContext) -> None:
    """Ends the process at once, writing nothing (as one whose log writes fail does)."""
    os._exit(0)


def closes_every_file(ctx: SubtaskContext) -> None:
    """Closes every file its process has but its standard ones (the pipe its outcome goes
    back on among them), then ends normally."""
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))


def hard_exit(ctx: SubtaskContext) -> None:
    print("exiting hard", flush=True)
    os._exit(3)


def fail_by_index(ctx: SubtaskContext) -> None:
    """Subtask 1 kills its process, subtask 2 hangs, subtask 3 raises; the others succeed."""
    print(f"subtask {ctx.index}", flush=True)
    if ctx.index == 1:
        os._exit(3)
    if ctx.index == 2:
        time.sleep(3600)
    if ctx.index == 3:
        raise ValueError("boom in subtask 3")
    (ctx.directory / "done.txt").write_text(str(os.getpid()))


def noop(ctx: SubtaskContext) -> None:
    """Does nothing: what is measured is the pipeline's own work per subtask."""


def list_open_files(ctx: SubtaskContext) -> None:
    """Write what the process's file descriptors point at."""
    import json
    import os

    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    (ctx.directory / "open-files.json").write_text(json.dumps(names))


def scribble(ctx: SubtaskContext) -> None:
    """Appends to each of its inputs (which it must not be able to do to the datastore),
    then writes an output of what it read."""
    for path in ctx.inputs:
        try:
            with path.open("a") as writer:
                writer.write(" scribbled")
        except PermissionError:
            print(f"{path.name} is read-only")
        (ctx.directory / f"{path.stem}.out").write_text(path.read_text().upper())


def count_inputs(ctx: SubtaskContext) -> None:
    """Writes how many inputs it was given, and their names: an aggregate over a unit."""
    names = sorted(path.name for path in ctx.inputs)
    (ctx.directory / "summary.txt").write_text(f"count={len(names)} {' '.join(names)}")


def count_runs(ctx: SubtaskContext) -> None:
    """Writes, as each input's output, which run of this subtask this is (counted in a
    file of its directory that is no output): a run again writes other bytes."""
    runs = ctx.directory / "runs"
    number = int(runs.read_text()) + 1 if runs.exists() else 1
    runs.write_text(str(number))
    for path in ctx.inputs:
        (ctx.directory / f"{path.stem}.out").write_text(f"run {number}")


def averaging_with_dark(ctx: SubtaskContext) -> None:
    """The sample's averaging, and a note of the dark model it was given (its path under
    its original name, and its first line) and the event's labels."""
    from pipeline.sample.algorithms import averaging

    averaging(ctx)
    dark = ctx.models["dark"]
    note = f"{dark.name} {dark.parent == ctx.directory} {dark.read_text().splitlines()[0]}"
    (ctx.directory / "dark-used.txt").write_text(f"{note}\nlabels {','.join(ctx.labels)}\n")


def slow_echo(ctx: SubtaskContext) -> None:
    """``echo`` after 3 seconds: long enough to be cancelled while it runs."""
    time.sleep(3)
    echo(ctx)


def hang_on_first_run(ctx: SubtaskContext) -> None:
    """Subtask 0 hangs the first time it runs (a mark in its directory, which is no
    output, says so); ``echo`` otherwise."""
    mark = ctx.directory / "ran-before"
    if ctx.index == 0 and not mark.exists():
        mark.write_text("1")
        hang(ctx)
    echo(ctx)


def gated_echo(ctx: SubtaskContext) -> None:
    """``echo`` once the test opened this subtask's gate: a file named for its index in the
    directory ``TEST_GATES`` names (the environment a job array inherits)."""
    gate = os.path.join(os.environ["TEST_GATES"], str(ctx.index))
    deadline = time.monotonic() + 600
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.1)
    echo(ctx)


def ended_on_first_run(ctx: SubtaskContext) -> None:
    """The sample's permuter, but subtask 0's process is ended by a SIGTERM from outside
    the first time (as a batch system ends a job at its walltime)."""
    from pipeline.sample.algorithms import permuter

    mark = ctx.directory / "ran-before"
    if ctx.index == 0 and not mark.exists():
        mark.write_text("1")
        os.kill(os.getpid(), signal.SIGTERM)
    permuter(ctx)
