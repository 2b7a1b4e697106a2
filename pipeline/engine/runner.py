"""The runner: an algorithm run on subtasks, a Python callable or an external executable.

Either runs in a child process with the subtask directory as working directory and
stdout and stderr going to the subtask's log, its address space capped at the subtask's
memory limit when its node sets one (``SubtaskContext.memory_limit``: an allocation past
it fails, a Python step's with ``MemoryError``, rather than the host running out). A
Python callable runs in a child forked by the worker's fork server (no interpreter
start-up per subtask, and no copy of the worker's pages to pay for, see
``pipeline.engine.forkserver``); an executable runs as a child process. The supervising
process enforces the subtask timeout by killing the child, so a hung or crashing
algorithm fails its subtask and never takes the worker down with it.

The subtasks of one batch message (``run_many``) share a forked child, which runs them
one after another: a new child costs milliseconds, more than a short algorithm. A child
that crashes or hangs fails only the subtask it was running; the rest of the batch goes
on in a new child. A child is also kept for the next messages of the same instance's
same node, and one is forked in advance while the worker is idle (see ``_Child``).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import resource
import select
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import traceback
from collections import deque
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any

from pipeline.domain.context import SubtaskContext
from pipeline.domain.definitions import resolve_callable
from pipeline.engine.forkserver import ForkServer, exit_status
from pipeline.engine.leases import NO_RENEWAL, LeaseRenewal
from pipeline.engine.taskdir import INPUTS_FILE, LOG_NAME, MODELS_FILE, PARAMETERS_FILE

#: prctl option: the signal a process gets when its parent dies (Linux).
PR_SET_PDEATHSIG = 1


#: A subtask's error when the process running algorithms went first (the worker, or a
#: batch job's element, is going down).
GOING_DOWN = "the algorithm's process ended without an outcome"


@dataclass
class SubtaskOutcome:
    """How one subtask's run ended: ``ok``, else the one-line ``error`` (and whether it was
    killed at the timeout)."""

    ok: bool
    error: str = ""
    timed_out: bool = False
    #: Files of the node's output types it left (counted by the worker once it succeeded).
    outputs: int | None = None
    #: Those outputs, kept in the object store (``stages.checked_outputs``).
    kept: list[list[Any]] | None = None
    details: dict[str, Any] = field(default_factory=dict)


def run(
    algorithm: str | dict[str, Any],
    ctx: SubtaskContext,
    timeout: float,
    heartbeat: LeaseRenewal = NO_RENEWAL,
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
    heartbeat: LeaseRenewal = NO_RENEWAL,
    python_path: Sequence[str] = (),
    scope: Hashable | None = None,
    calls: str = "context",
) -> Iterator[SubtaskOutcome]:
    """Run ``algorithm`` on each subtask in turn, yielding each outcome as it ends; each
    subtask gets ``timeout`` seconds. Never raises (see ``run``).

    A callable's subtasks share a forked child until one crashes or times out (see the
    module docstring), which imports it with ``python_path`` (the definition's code
    directories) first on its path; the child is kept for the next subtasks of the same
    ``scope`` (None: none), and calls it as ``calls`` says (``Node.calls``: with the
    ``SubtaskContext``, or with Ziggy's inputs dict). An executable runs as a process per
    subtask. Closing the iterator early kills a child still running a subtask.
    """
    with _group_dies_with_us():
        if isinstance(algorithm, str):
            yield from _run_callables(
                algorithm, contexts, timeout, heartbeat, python_path, scope, calls
            )
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
    heartbeat: LeaseRenewal,
) -> SubtaskOutcome:
    (ctx.directory / PARAMETERS_FILE).write_text(json.dumps(ctx.parameters))
    (ctx.directory / INPUTS_FILE).write_text(json.dumps([p.name for p in ctx.inputs]))
    if ctx.models:
        models = {kind: path.name for kind, path in ctx.models.items()}
        (ctx.directory / MODELS_FILE).write_text(json.dumps(models))
    command = [algorithm["executable"], *algorithm.get("args", [])]
    env = {
        **os.environ,
        "PIPELINE_SUBTASK_INDEX": str(ctx.index),
        "PIPELINE_UNIT_OF_WORK": ctx.unit_of_work,
        "PIPELINE_EVENT_LABELS": ",".join(ctx.labels),
        "PIPELINE_EVENT_HANDLER": ctx.event_handler,
        "PIPELINE_EVENT_NAME": ctx.event_name,
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
                preexec_fn=partial(_in_executable, ctx.memory_limit),
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
                    if heartbeat.stopped:
                        os.killpg(process.pid, signal.SIGKILL)
                        process.wait()
                        return SubtaskOutcome(False, STOPPED)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return SubtaskOutcome(False, f"timeout: killed after {timeout:g} s", timed_out=True)
    if status == 0:
        return SubtaskOutcome(True)
    return SubtaskOutcome(False, _exit_message(status, log_path))


def _in_executable(memory_limit: Sequence[Any] | None) -> None:
    """In an executable's process before it starts: die with the worker, within the
    subtask's memory."""
    die_with_parent()
    limit_memory(memory_limit)


def limit_memory(memory_limit: Sequence[Any] | None) -> None:
    """Cap this process's address space at the subtask's limit (bytes, and why), or put
    it back at the hard limit for a subtask without one (a kept child runs many)."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    wanted = hard
    if memory_limit is not None:
        wanted = memory_limit[0] if hard == resource.RLIM_INFINITY else min(memory_limit[0], hard)
    resource.setrlimit(resource.RLIMIT_AS, (wanted, hard))


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
    last = _last_line(log_path) or _no_space(log_path.parent)
    return f"{reason}: {last}" if last else reason


#: Bytes free under which a file system counts as full (an algorithm that died writing
#: nothing to its log there most likely died of it).
FULL_BELOW = 1 << 20


def _no_space(directory: Path) -> str:
    """Why an algorithm that ended without a word may have: its directory's file system
    is full (its log and its outcome could not be written); "" when it is not."""
    try:
        found = os.statvfs(directory)
    except OSError:
        return ""
    if found.f_bfree * found.f_frsize >= FULL_BELOW:
        return ""
    return f"No space left on device (the file system of {directory} is full)"


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
    heartbeat: LeaseRenewal,
    python_path: Sequence[str],
    scope: Hashable | None,
    calls: str,
) -> Iterator[SubtaskOutcome]:
    """Run the subtasks in turn in a child (see ``_Child``), each reported on a pipe; a
    subtask that crashes the child or outlives ``timeout`` fails alone, and a new child
    takes on the rest. The child is kept for the scope's next subtasks if it is still up."""
    key = None if scope is None else (scope, reference, calls, tuple(python_path))
    todo = deque(contexts)
    while todo:
        try:
            child = _take_child(key)
        except Exception as exc:  # noqa: BLE001 - fork or pipe errors on the worker's side
            yield SubtaskOutcome(False, f"could not run the algorithm: {exc}")
            todo.popleft()
            continue
        try:
            sent = 0  # of the subtasks first in line, sent to this child, outcome not read
            while todo and child.alive:
                try:
                    while sent < len(todo) and _may_send(todo, sent):
                        if not child.send(reference, python_path, todo[sent], calls):
                            break
                        sent += 1
                except OSError as exc:  # it died idle, between two looks
                    child.alive = False
                    if not sent:
                        yield SubtaskOutcome(False, f"could not run the algorithm: {exc}")
                        todo.popleft()
                        break
                ctx = todo.popleft()
                sent -= 1
                yield child.next_outcome(ctx, timeout, heartbeat)
                if heartbeat.stopped:
                    return
        finally:
            _release(child, key)


def _may_send(todo: deque[SubtaskContext], position: int) -> bool:
    """May the subtask at ``position`` in line be sent now? The first always; the next
    ones ahead only if they are the same task's (the same unit of work of the scope's
    node): the caller sees another task's outcome first, and whether that task is still
    its worker's (a halt) before its subtask starts."""
    return position == 0 or todo[position].unit_of_work == todo[0].unit_of_work


#: The outcome of a subtask stopped because its task moved on (halted, restarted).
STOPPED = "stopped: its task was halted or restarted while it ran"
#: Bytes of requests a busy child may be sent ahead of its outcomes: at most its pipe's
#: capacity (64 KiB on Linux, unless shrunk), so sending never waits for the child.
SEND_AHEAD_BYTES = 16 * 1024
#: A child that has run this many subtasks is retired for a fresh one, so what an
#: algorithm leaks stays bounded (as Celery's ``max_tasks_per_child`` does for workers).
CHILD_RECYCLE_AFTER = 1000
#: This process's idle children: the one kept after running a scope's subtasks, for the
#: scope's next ones, and a fresh one forked in advance while the process had nothing to do.
_kept: _Child | None = None
_spare: _Child | None = None
#: Whether this process has run an algorithm: only such a process forks a spare.
_ran_any = False
#: This process's fork server (see ``pipeline.engine.forkserver``), once it needed a child.
_server: ForkServer | None = None
#: Seconds to wait for a killed child's exit to be reported: it is dying already.
KILLED_EXIT_WAIT = 30.0
#: Where the interpreter's own and installed modules live: the code a kept child checks for
#: changes is the rest, the pipeline's algorithms.
_LIBRARY_PATHS = tuple(
    {sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")}
)


def prepare_spare() -> None:
    """Have a fresh child forked now, while this process is idle, for its next subtasks to
    start in without waiting for a fork (milliseconds, more under load). Only in a
    process that has run algorithms already (a worker's pool process, between tasks)."""
    global _spare
    if _spare is None and _ran_any:
        _spare = _Child()


def _take_child(key: Hashable | None) -> _Child:
    """The kept child if it ran this scope (same algorithm, same code), else the spare,
    else a new one. A kept child never runs another scope's subtasks: the subtasks of two
    instances never share a process's memory."""
    global _kept, _spare, _ran_any
    _ran_any = True
    if _kept is not None:
        kept, _kept = _kept, None
        if key is not None and kept.key == key and kept.usable():
            return kept
        kept.retire()
    child, _spare = _spare, None
    if child is None or not child.usable():
        if child is not None:
            child.retire()
        child = _Child()
    child.key = key
    return child


def _release(child: _Child, key: Hashable | None) -> None:
    """Keep an idle child that is still up for the scope's next subtasks; retire the rest."""
    global _kept
    if key is not None and child.alive and not child.busy and child.ran < CHILD_RECYCLE_AFTER:
        if _kept is not None:
            _kept.retire()
        _kept = child
        return
    child.retire()


def _fork_server() -> ForkServer:
    """This process's fork server, started at its first child (a worker's pool process
    starts its own: one inherited from the process that forked it is not its to use)."""
    global _server
    if _server is not None and (_server.owner != os.getpid() or not _server.usable()):
        _server.close()
        _server = None
    if _server is None:
        _server = ForkServer(_serve, _prepare_server)
    return _server


def _prepare_server(keep: int) -> None:
    """In the fork server: die with the worker, and hold none of its files but ``keep``
    (its socket) and the standard streams its children start with."""
    die_with_parent()
    _close_inherited_files(keep)


class _Child:
    """A forked child that runs the subtasks sent to it, one at a time, as seen from the
    supervising process.

    Each subtask goes to the child as a line of JSON on one pipe and its outcome comes back
    as a line on another. Its outcome, or, when it ends without one, its exit status (which
    the fork server writes there, see ``pipeline.engine.forkserver``). A new child costs
    milliseconds (more under load), more than a short algorithm, so one is forked in
    advance (``prepare_spare``)
    and kept for the next subtasks of the same scope: the same instance's same node, the
    same algorithm and code directories (``_take_child``). The algorithm is imported in the
    child, never in the worker; the child reports the files of the code it imported, and
    is not reused once one has changed, so a fix runs at the next subtask without
    restarting any worker.
    """

    def __init__(self) -> None:
        _libc()  # loaded before the fork server forks, so each child need not load it
        commands_read, commands = os.pipe()
        reports, reports_write = os.pipe()
        try:
            self.pid = _fork_server().fork(commands_read, reports_write)
        except BaseException:
            for fd in (commands, reports):
                os.close(fd)
            raise
        finally:
            os.close(commands_read)
            os.close(reports_write)
        self.commands, self.fd = commands, reports
        self.alive, self._buffer = True, b""
        #: The sizes of the requests sent whose outcomes were not read yet, oldest first.
        self._unanswered: deque[int] = deque()
        # A pipe holds less than usual once its user has many (fs.pipe-user-pages-soft).
        self._ahead_limit = min(SEND_AHEAD_BYTES, fcntl.fcntl(commands, fcntl.F_GETPIPE_SZ))
        #: The subtask last refused for want of room, with its request already encoded.
        self._refused: tuple[SubtaskContext, bytes] | None = None
        #: The process that made it: a process forked from that one must not use it.
        self.owner = os.getpid()
        #: The scope it runs (see ``_take_child``), and how many subtasks it was sent.
        self.key: Hashable | None = None
        self.ran = 0
        #: The algorithm's own code it imported: file, and (modification time, size).
        self.code: dict[str, tuple[int, int]] = {}

    @property
    def busy(self) -> bool:
        """Sent subtasks whose outcomes were not read yet."""
        return bool(self._unanswered)

    def send(
        self, reference: str, python_path: Sequence[str], ctx: SubtaskContext, calls: str
    ) -> bool:
        """Send a subtask, unless the child is running others already and the requests
        unanswered would fill more than ``SEND_AHEAD_BYTES`` of its pipe; whether it was
        sent. Sending ahead spares the child a wait for the worker between two subtasks,
        and never blocks the worker: the pipe always has room for what it holds."""
        if self._refused is not None and self._refused[0] is ctx:
            line, self._refused = self._refused[1], None
        else:
            line = _request(reference, python_path, ctx, calls)
        if self._unanswered and sum(self._unanswered) + len(line) > self._ahead_limit:
            self._refused = (ctx, line)  # offered again once there is room: not encoded twice
            return False
        os.write(self.commands, line)
        _started(self.pid)
        self._unanswered.append(len(line))
        self.ran += 1
        return True

    def usable(self) -> bool:
        """This process's, up, not due to be recycled, and its algorithm's code unchanged
        since imported."""
        if self.owner != os.getpid() or not self.alive or self.ran >= CHILD_RECYCLE_AFTER:
            return False
        if select.select([self.fd], [], [], 0)[0]:  # idle, yet it wrote: it has exited
            self.alive = False
            return False
        return all(_stamp(path) == stamp for path, stamp in self.code.items())

    def next_outcome(
        self, ctx: SubtaskContext, timeout: float, heartbeat: LeaseRenewal
    ) -> SubtaskOutcome:
        """The outcome of the subtask the child is running now: its report, or the reason
        the child ended without one (killed at the timeout, crashed)."""
        line, finished = self._read_line(timeout, heartbeat)
        status = exit_status(line)
        if line and status is None:
            self._unanswered.popleft()
            report = json.loads(line)
            self.code.update({path: tuple(stamp) for path, stamp in report["code"]})
            return SubtaskOutcome(**report["outcome"])
        self.alive = False
        if not finished:
            self._kill()
            self._await_exit()
            self._unanswered.clear()
            if heartbeat.stopped:
                return SubtaskOutcome(False, STOPPED)
            return SubtaskOutcome(False, f"timeout: killed after {timeout:g} s", timed_out=True)
        self._unanswered.clear()
        if status is None:  # the fork server went first: the worker is going down
            return SubtaskOutcome(False, GOING_DOWN)
        return SubtaskOutcome(
            False, _exit_message(os.waitstatus_to_exitcode(status), ctx.directory / LOG_NAME)
        )

    def _await_exit(self) -> None:
        """Wait until the fork server reports the killed child gone (or goes itself): its
        algorithm writes nothing more into a subtask directory a restart may reuse."""
        deadline = time.monotonic() + KILLED_EXIT_WAIT
        while True:
            line, finished = self._read_line(_left(deadline), NO_RENEWAL)
            if not finished or not line or exit_status(line) is not None:
                return

    def _read_line(self, timeout: float, heartbeat: LeaseRenewal) -> tuple[bytes, bool]:
        """The next report line; ``finished`` is False at the deadline, and the line empty
        when the child closed the pipe without one."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = _left(deadline)
            if remaining <= 0:
                return b"", False
            heartbeat.tick()
            if heartbeat.stopped:
                return b"", False
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

    def retire(self) -> None:
        """Let the child go: an idle one exits once its pipe closes (the fork server reaps
        it); one still running a subtask (the caller stopped early) is killed first. A
        process forked from its owner only closes its copies of the pipes."""
        if self.owner == os.getpid() and self.alive and self.busy:
            self._kill()
            self._await_exit()
            self._unanswered.clear()
        self.alive = False
        os.close(self.commands)
        os.close(self.fd)


def _request(reference: str, python_path: Sequence[str], ctx: SubtaskContext, calls: str) -> bytes:
    """A subtask as the child reads it: a line of JSON."""
    context = {
        **ctx.__dict__,
        "directory": str(ctx.directory),
        "inputs": [str(path) for path in ctx.inputs],
        "models": {kind: str(path) for kind, path in ctx.models.items()},
    }
    request = {
        "reference": reference,
        "python_path": list(python_path),
        "context": context,
        "calls": calls,
    }
    return json.dumps(request).encode() + b"\n"


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size


def _serve(commands: int, reports: int) -> None:
    """In the forked child: run each subtask sent, with output to its log, report its
    outcome and the algorithm code it imported, until the pipe closes; then exit.

    The definition's code directories go first on the child's path only: the worker's own
    path stays as it was, so two pipelines may each have a module of the same name.

    An error of its own (not the algorithm's: ``_run_one`` reports those) is printed to
    the subtask's log and ends the child with status 1, its last line the subtask's error.
    """
    status = 0
    try:
        os.setpgid(0, 0)  # its own process group, so a timeout or halt kills its children too
        die_with_parent()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        # The worker's connections (database, broker) are not the algorithm's to hold open.
        _close_inherited_files(commands, reports)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        logging.root.handlers = [logging.StreamHandler(sys.stderr)]
        known = set(sys.modules)
        looked = len(known)  # modules then: new code is looked for only when that changes
        first = True
        for line in os.fdopen(commands, "rb"):
            request = json.loads(line)
            if first:
                sys.path[:0] = request["python_path"]
                first = False
            outcome = _run_one(request["reference"], _context(request["context"]), request["calls"])
            sys.stdout.flush()
            sys.stderr.flush()
            code = _new_code(known) if len(sys.modules) != looked else []
            looked = len(sys.modules)
            report = {"outcome": outcome.__dict__, "code": code}
            os.write(reports, json.dumps(report).encode() + b"\n")
    except BrokenPipeError:  # the worker stopped listening (a halt): nobody to tell
        pass
    except BaseException:  # noqa: BLE001 - the child's end: said in the log, then the status
        status = 1
        with suppress(BaseException):
            traceback.print_exc()
            sys.stderr.flush()
    finally:
        os._exit(status)


def _close_inherited_files(*keep: int) -> None:
    """Close every file descriptor above stderr but ``keep``."""
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def _context(fields: dict[str, Any]) -> SubtaskContext:
    return SubtaskContext(
        **{
            **fields,
            "directory": Path(fields["directory"]),
            "inputs": [Path(path) for path in fields["inputs"]],
            "models": {kind: Path(path) for kind, path in fields.get("models", {}).items()},
            "memory_limit": limit_read(fields.get("memory_limit")),
        }
    )


def limit_read(memory_limit: Sequence[Any] | None) -> tuple[int, str] | None:
    """A subtask's memory limit as JSON carried it (a list), as the context holds it."""
    return None if memory_limit is None else (int(memory_limit[0]), str(memory_limit[1]))


def _new_code(known: set[str]) -> list[tuple[str, tuple[int, int] | None]]:
    """The source files of the modules imported since last looked at, outside the
    interpreter's and the installed packages' (``known`` is updated)."""
    found = []
    for name in set(sys.modules) - known:
        known.add(name)
        path = getattr(sys.modules.get(name), "__file__", None)
        if path and not path.startswith(_LIBRARY_PATHS):
            found.append((path, _stamp(path)))
    return found


def _run_one(reference: str, ctx: SubtaskContext, calls: str) -> SubtaskOutcome:
    """Run one subtask in the child, stdout and stderr going to its log."""
    try:
        log_fd = os.open(ctx.directory / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        os.chdir(ctx.directory)
        # Imported in the child, never in the worker: a fix to the algorithm's code runs at
        # its next subtask (fix, then resubmit) without restarting any worker. The import
        # is paid once per child (see ``_Child`` for when one is reused).
        function = resolve_callable(reference)
        limit_memory(ctx.memory_limit)
        try:
            function(ctx.ziggy_inputs() if calls == "ziggy" else ctx)
        finally:
            limit_memory(None)
        return SubtaskOutcome(True)
    except BaseException as exc:  # noqa: BLE001 - every failure is the subtask's outcome
        traceback.print_exc()
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if isinstance(exc, MemoryError) and ctx.memory_limit is not None:
            message = f"{message} (over its memory limit, {ctx.memory_limit[1]})".strip()
        return SubtaskOutcome(
            False, f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        )
