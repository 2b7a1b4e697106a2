"""The runner: an algorithm run on subtasks, a Python callable or an external executable.

Either runs in a child process with the subtask directory as working directory and
stdout and stderr going to the subtask's log. A Python callable runs in a forked child
of the worker (no interpreter start-up per subtask); an executable runs as a child
process. The supervising process enforces the subtask timeout by killing the child, so a
hung or crashing algorithm fails its subtask and never takes the worker down with it.

The subtasks of one batch message (``run_many``) share a forked child, which runs them
one after another: a fork costs several milliseconds in a worker process, more than a
short algorithm. A child that crashes or hangs fails only the subtask it was running;
the rest of the batch goes on in a new child.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from pipeline.domain.context import SubtaskContext
from pipeline.domain.definitions import resolve_callable
from pipeline.engine.leases import NO_HEARTBEAT, Heartbeat
from pipeline.engine.taskdir import INPUTS_FILE, LOG_NAME, PARAMETERS_FILE

#: prctl option: the signal a process gets when its parent dies (Linux).
PR_SET_PDEATHSIG = 1


@dataclass
class SubtaskOutcome:
    """How one subtask's run ended: ``ok``, else the one-line ``error`` (and whether it was
    killed at the timeout)."""

    ok: bool
    error: str = ""
    timed_out: bool = False
    #: Files of the node's output types it left (counted by the worker once it succeeded).
    outputs: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


def run(
    algorithm: str | dict[str, Any],
    ctx: SubtaskContext,
    timeout: float,
    heartbeat: Heartbeat = NO_HEARTBEAT,
    python_path: Sequence[str] = (),
) -> SubtaskOutcome:
    """Run ``algorithm`` on the subtask ``ctx``, killing it after ``timeout`` seconds.

    Never raises: a failure to even start the algorithm is the subtask's outcome too.
    """
    return next(run_many(algorithm, [ctx], timeout, heartbeat, python_path))


def run_many(
    algorithm: str | dict[str, Any],
    contexts: list[SubtaskContext],
    timeout: float,
    heartbeat: Heartbeat = NO_HEARTBEAT,
    python_path: Sequence[str] = (),
) -> Iterator[SubtaskOutcome]:
    """Run ``algorithm`` on each subtask in turn, yielding each outcome as it ends; each
    subtask gets ``timeout`` seconds. Never raises (see ``run``).

    A callable's subtasks share a forked child until one crashes or times out (see the
    module docstring), which imports it with ``python_path`` (the definition's code
    directories) first on its path; an executable runs as a process per subtask. Closing
    the iterator early kills the child.
    """
    with _group_dies_with_us():
        if isinstance(algorithm, str):
            yield from _run_callables(algorithm, contexts, timeout, heartbeat, python_path)
            return
        for ctx in contexts:
            try:
                yield _run_executable(algorithm, ctx, ctx.directory / LOG_NAME, timeout, heartbeat)
            except Exception as exc:  # noqa: BLE001 - pipe or file errors on the worker's side
                yield SubtaskOutcome(False, f"could not run the algorithm: {exc}")


#: The process group of the algorithm now running in this process, if any.
_running_group: int | None = None


@contextmanager
def _group_dies_with_us() -> Iterator[None]:
    """While an algorithm runs, a SIGTERM to this process (a halt's revoke) kills the
    algorithm's whole process group first, children of an executable included."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def terminate(signum: int, frame: Any) -> None:
        if _running_group:
            with suppress(ProcessLookupError):
                os.killpg(_running_group, signal.SIGKILL)
        signal.signal(signal.SIGTERM, previous)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _started(group: int) -> None:
    global _running_group
    _running_group = group


def _run_executable(
    algorithm: dict[str, Any],
    ctx: SubtaskContext,
    log_path: Path,
    timeout: float,
    heartbeat: Heartbeat,
) -> SubtaskOutcome:
    (ctx.directory / PARAMETERS_FILE).write_text(json.dumps(ctx.parameters))
    (ctx.directory / INPUTS_FILE).write_text(json.dumps([p.name for p in ctx.inputs]))
    command = [algorithm["executable"], *algorithm.get("args", [])]
    env = {
        **os.environ,
        "PIPELINE_SUBTASK_INDEX": str(ctx.index),
        "PIPELINE_UNIT_OF_WORK": ctx.unit_of_work,
    }
    with log_path.open("ab") as log:
        try:
            process = subprocess.Popen(
                command,
                cwd=ctx.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        except OSError as exc:
            return SubtaskOutcome(False, f"cannot start {command[0]}: {exc.strerror}")
        _started(process.pid)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    status = process.wait(timeout=min(heartbeat.interval, _left(deadline)))
                    break
                except subprocess.TimeoutExpired:
                    if _left(deadline) <= 0:
                        raise
                    heartbeat.tick()
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return SubtaskOutcome(False, f"timeout: killed after {timeout:g} s", timed_out=True)
    if status == 0:
        return SubtaskOutcome(True)
    return SubtaskOutcome(False, _exit_message(status, log_path))


def die_with_parent() -> None:
    """Have the kernel kill this process when its parent dies.

    A halted or killed worker process must not leave its algorithm running on, writing
    into a subtask directory that a restart is about to reuse.
    """
    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@cache
def _libc() -> ctypes.CDLL:
    """The C library, loaded once per process rather than once per child."""
    return ctypes.CDLL(None, use_errno=True)


def _exit_message(status: int, log_path: Path) -> str:
    reason = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
    last = _last_line(log_path)
    return f"{reason}: {last}" if last else reason


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


def _run_callables(
    reference: str,
    contexts: list[SubtaskContext],
    timeout: float,
    heartbeat: Heartbeat,
    python_path: Sequence[str],
) -> Iterator[SubtaskOutcome]:
    """Fork a child that runs the subtasks in turn and reports each outcome on a pipe as a
    line of JSON; a subtask that crashes the child or outlives ``timeout`` fails alone,
    and a new child takes on the rest."""
    todo = list(contexts)
    while todo:
        try:
            child = _ChildRunner(reference, todo, python_path)
        except Exception as exc:  # noqa: BLE001 - fork or pipe errors on the worker's side
            yield SubtaskOutcome(False, f"could not run the algorithm: {exc}")
            todo.pop(0)
            continue
        try:
            for ctx in list(todo):
                outcome = child.next_outcome(ctx, timeout, heartbeat)
                todo.pop(0)
                yield outcome
                if not child.alive:
                    break
        finally:
            child.close(all_reported=not todo)


#: Children that reported every outcome but had not exited yet when last looked at.
_exiting: list[int] = []


def _reap_exited() -> None:
    """Reap children left exiting by ``_ChildRunner.close`` (zombies hold no memory)."""
    for pid in list(_exiting):
        with suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == 0:
                continue
        _exiting.remove(pid)


class _ChildRunner:
    """One forked child running ``contexts`` in turn, as seen from the supervising process."""

    def __init__(
        self, reference: str, contexts: list[SubtaskContext], python_path: Sequence[str]
    ) -> None:
        _reap_exited()
        read_end, write_end = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        _libc()  # loaded here, so each child need not load it
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns
            os.close(read_end)
            _child(reference, contexts, write_end, python_path)
        os.close(write_end)
        _started(self.pid)
        self.fd, self.alive, self._buffer = read_end, True, b""

    def next_outcome(
        self, ctx: SubtaskContext, timeout: float, heartbeat: Heartbeat
    ) -> SubtaskOutcome:
        """The outcome of the subtask the child is running now: its report, or the reason
        the child ended without one (killed at the timeout, crashed)."""
        line, finished = self._read_line(timeout, heartbeat)
        if line:
            return SubtaskOutcome(**json.loads(line))
        self.alive = False
        if not finished:
            self._kill()
            os.waitpid(self.pid, 0)
            return SubtaskOutcome(False, f"timeout: killed after {timeout:g} s", timed_out=True)
        _, status = os.waitpid(self.pid, 0)
        return SubtaskOutcome(
            False, _exit_message(os.waitstatus_to_exitcode(status), ctx.directory / LOG_NAME)
        )

    def _read_line(self, timeout: float, heartbeat: Heartbeat) -> tuple[bytes, bool]:
        """The next report line; ``finished`` is False at the deadline, and the line empty
        when the child closed the pipe without one."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = _left(deadline)
            if remaining <= 0:
                return b"", False
            heartbeat.tick()
            readable, _, _ = select.select([self.fd], [], [], min(remaining, heartbeat.interval))
            if readable:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    return b"", True
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line, True

    def _kill(self) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
            os.kill(self.pid, signal.SIGKILL)  # in case it had not made its own group yet

    def close(self, all_reported: bool) -> None:
        """Reap the child; one still running (the caller stopped early) is killed first.

        A child that reported every outcome is exiting on its own: it is reaped later
        rather than waited for, since a big process takes milliseconds to exit.
        """
        os.close(self.fd)
        if not self.alive:
            return
        if all_reported:
            _exiting.append(self.pid)
            _reap_exited()
            return
        self._kill()
        os.waitpid(self.pid, 0)


def _child(
    reference: str, contexts: list[SubtaskContext], report_fd: int, python_path: Sequence[str]
) -> None:
    """In the forked child: run each subtask with output to its log, report, and exit.

    The definition's code directories go first on the child's path only: the worker's own
    path stays as it was, so two pipelines may each have a module of the same name."""
    try:
        sys.path[:0] = python_path
        os.setpgid(0, 0)  # its own process group, so a timeout or halt kills its children too
        die_with_parent()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        logging.root.handlers = [logging.StreamHandler(sys.stderr)]
        for ctx in contexts:
            outcome = _run_one(reference, ctx)
            sys.stdout.flush()
            sys.stderr.flush()
            os.write(report_fd, json.dumps(outcome.__dict__).encode() + b"\n")
    finally:
        os._exit(0)


def _run_one(reference: str, ctx: SubtaskContext) -> SubtaskOutcome:
    """Run one subtask in the child, stdout and stderr going to its log."""
    try:
        log_fd = os.open(ctx.directory / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        os.chdir(ctx.directory)
        # Imported in the child, never in the worker: a fix to the algorithm's code runs at
        # its next subtask (fix, then resubmit) without restarting any worker. The import
        # is paid once per child, so once per batch for a big task.
        resolve_callable(reference)(ctx)
        return SubtaskOutcome(True)
    except BaseException as exc:  # noqa: BLE001 - every failure is the subtask's outcome
        traceback.print_exc()
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return SubtaskOutcome(
            False, f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        )
