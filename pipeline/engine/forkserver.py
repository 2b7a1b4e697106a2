"""The fork server: a process of its own that forks the children algorithms run in.

Forking a worker process costs it more than the fork: as long as a child shares the
worker's memory, every page the worker writes afterwards is copied first, and a child
forked for each new instance made the worker's next transactions several milliseconds
slower each (measured: 5.3 ms for a query taking 0.5 ms). The fork server is forked from
the worker once, then waits; the children are forked from it, so the worker never shares
its memory with a running algorithm and pays that copying once, when the server starts.

The worker sends the server the two pipe ends a child needs (over a Unix socket, as file
descriptors); the server forks the child with them and answers its pid. It reaps its
children as they exit and writes each one's wait status into its reports pipe, of which
it keeps a copy, as a last line: the worker reads a crash's exit status where it reads
outcomes, since the child is not its own to wait for.

The server dies with the worker (and its children with it, see ``runner.die_with_parent``),
and exits when the worker closes its socket.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from contextlib import suppress

#: Bytes of a request or answer: a word, or a pid.
MESSAGE_SIZE = 64
#: The last line the server writes into a child's reports pipe: its wait status.
EXIT_KEY = "exit"
EXIT_MARK = b'{"' + EXIT_KEY.encode() + b'": '  # unescaped: never inside a JSON string


class ForkServer:
    """The worker's side of its fork server.

    Parameters:
      serve: what a child runs, given the two pipe ends (its commands and its reports);
        it must never return (it ends with ``os._exit``).
      prepare: run in the server once forked, given the file descriptor of its socket,
        the one file it needs of the worker's (see ``runner._prepare_server``).
    """

    def __init__(self, serve: Callable[[int, int], None], prepare: Callable[[int], None]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:  # the server: never returns
            ours.close()
            _serve_forks(theirs, serve, prepare)
        theirs.close()
        self.socket = ours
        #: The process that started it: the only one that may use it.
        self.owner = os.getpid()

    def fork(self, commands: int, reports: int) -> int:
        """A new child, given these pipe ends (the caller closes its copies); its pid."""
        socket.send_fds(self.socket, [b"fork"], [commands, reports])
        answer = self.socket.recv(MESSAGE_SIZE)
        if not answer:
            raise OSError("the fork server has exited")
        return int(answer)

    def usable(self) -> bool:
        """Still up: its socket has not been closed from its side."""
        try:
            return self.socket.recv(MESSAGE_SIZE, socket.MSG_DONTWAIT | socket.MSG_PEEK) != b""
        except BlockingIOError:
            return True
        except OSError:
            return False

    def close(self) -> None:
        """Let the server go (it exits once it reads the socket's end); reap it if it has
        exited already. A process that inherited the server only closes its copy."""
        self.socket.close()
        if self.owner == os.getpid():
            with suppress(ChildProcessError):
                os.waitpid(self.pid, os.WNOHANG)


def exit_status(line: bytes) -> int | None:
    """The wait status the server wrote for an exited child, if ``line`` ends with it
    (after what a child killed while writing its report left of that), else None."""
    start = line.rfind(EXIT_MARK)
    if start < 0:
        return None
    return int(json.loads(line[start:])[EXIT_KEY])


def _serve_forks(
    requests: socket.socket, serve: Callable[[int, int], None], prepare: Callable[[int], None]
) -> None:
    """In the server: fork a child for each request, reap those that exit; until the
    worker's socket closes."""
    try:
        prepare(requests.fileno())
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        reports: dict[int, int] = {}  # child pid -> the server's copy of its reports pipe
        exited: dict[int, int] = {}  # pid -> wait status of a child reaped before it was filed

        def report(pid: int, status: int) -> None:
            fd = reports.pop(pid)
            with suppress(OSError):  # the worker may have stopped reading
                os.write(fd, json.dumps({EXIT_KEY: status}).encode() + b"\n")
            os.close(fd)

        def reap(*_: object) -> None:
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    return
                if pid == 0:
                    return
                if pid in reports:
                    report(pid, status)
                else:
                    exited[pid] = status

        signal.signal(signal.SIGCHLD, reap)
        while True:
            message, fds, _, _ = socket.recv_fds(requests, MESSAGE_SIZE, 2)
            if not message:
                return
            commands, reports_write = fds
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
            pid = os.fork()
            if pid == 0:  # the child: never returns
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
                requests.close()
                for fd in reports.values():
                    os.close(fd)
                serve(commands, reports_write)
            os.close(commands)
            reports[pid] = reports_write
            if pid in exited:  # a handler that was due ran between the fork and now
                report(pid, exited.pop(pid))
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
            requests.send(str(pid).encode())
    finally:
        os._exit(0)
