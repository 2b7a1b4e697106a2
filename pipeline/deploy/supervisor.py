"""The supervisor of a local cluster: ``cluster start`` runs it, and it starts again any
service of the home that dies (a killed worker, beat, Redis, the HTTP API, Flower, the
operations worker), with back-off, each restart an alert.

A service is wanted while its pid file is there: ``cluster start`` writes it (with the
command line to start it by), ``cluster stop`` removes it, after stopping the supervisor.
The supervisor acts only while it holds the home's lock, so never while a start or a stop
runs. A service found dead is started again at once the first time; one that dies again
before it has run ``stale_after`` seconds waits 1, 2, 4 ... up to ``BACKOFF_MAX`` seconds
before each next try. What is left of the dead one's process group (a killed worker's
pool) is killed first: the reconciler dispatches again the work it held.

Each episode (a service dead, until it has run ``stale_after`` seconds again) is one alert
of cause ``process:NAME@HOST``: a warning that says how it died and its new pid, an error
once it keeps dying at start, cleared when it runs again. An alert that cannot be written
(the database down) is in the supervisor's log (``logs/supervisor.log``).

The supervisor itself is watched by beat and by every worker of the home, once an
interval (``SupervisorWatch``): one killed is started again by the first of them to see it,
an alert of cause ``process:supervisor@HOST`` that says by whom, cleared once the new one
has run ``stale_after`` seconds. It adopts the services still running (their pid files say
which) and starts again those that died meanwhile.

Run as ``python -m pipeline.deploy.supervisor HOME``; SIGTERM stops it, not the services.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.database import transaction
from pipeline.deploy.cluster import (
    SUPERVISOR,
    Service,
    adopt,
    alive,
    home_lock,
    kill_leftovers,
    recorded_pid,
    recorded_services,
    spawn,
    supervisor_service,
)
from pipeline.engine import alerts
from pipeline.engine.task_state import HOST
from pipeline.settings import Settings, get_settings

log = logging.getLogger("pipeline.supervisor")

#: Seconds between two looks at the services.
TICK = 0.5
#: The longest wait between two tries of a service that keeps dying at start.
BACKOFF_MAX = 60.0
#: Deaths at start in a row from which the episode's alert is an error.
LOOPING = 3
#: The line the log shows once the supervisor watches (``cluster start`` waits for it).
READY = "supervisor: watching"


@dataclass
class Watched:
    """What the supervisor knows of one service."""

    pid: int
    #: When this pid was first seen (monotonic): how long it has run, at the least.
    since: float
    #: The process, when the supervisor started it (its exit status is then known).
    process: subprocess.Popen[bytes] | None = None
    #: Deaths in a row before it ran ``stable`` seconds.
    quick_deaths: int = 0
    #: Started again this many times in this episode.
    restarts: int = 0
    #: No try before this (monotonic).
    next_try: float = 0.0
    #: An episode is open: its alert is cleared once the service has run ``stable`` seconds.
    troubled: bool = False
    #: How the last one died.
    how: str = "died"
    dead_since: float | None = None


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stable = settings.stale_after
        self.watched: dict[str, Watched] = {}
        self.stopped = threading.Event()
        self.began = time.monotonic()
        #: Its own alert (started again by a watcher) is cleared once it has run ``stable``.
        self.settled = False

    def run(self) -> None:
        log.info("%s %s (pid %d)", READY, self.settings.home, os.getpid())
        while not self.stopped.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("supervisor: this look failed; the next one goes on")
            self.stopped.wait(TICK)
        log.info("supervisor: stopped")

    def tick(self) -> None:
        """One look at every wanted service, under the home's lock (skipped while a start or
        stop holds it)."""
        now = time.monotonic()
        with home_lock(self.settings, 0) as held:
            if not held:
                return
            wanted = recorded_services(self.settings)
            names = {service.name for service, _ in wanted}
            for gone in set(self.watched) - names:  # stopped by hand, its pid file removed
                del self.watched[gone]
            for service, pid in wanted:
                self._look(service, pid, now)
        if not self.settled and now - self.began >= self.stable:
            self.settled = True
            self._clear(supervisor_service(self.settings))

    def _look(self, service: Service, pid: int, now: float) -> None:
        known = self.watched.get(service.name)
        if known is None or known.pid != pid:  # new to the supervisor, or started by a start
            known = self.watched[service.name] = Watched(pid, since=now, troubled=True)
        if known.process is not None:
            # Its own child: the exit status says (and reaps it, so a dead one is not a
            # zombie); /proc would not match its command line yet between fork and exec.
            running = known.process.poll() is None
        else:
            running = alive(pid, service.match)
            if not running and (adopted := adopt(self.settings, service)):
                log.info(
                    "supervisor: %s runs as pid %d, not %d: adopted", service.name, *(adopted, pid)
                )
                known = self.watched[service.name] = Watched(adopted, since=now, troubled=True)
                running = True
        if running:
            if known.troubled and now - known.since >= self.stable:
                known.troubled, known.quick_deaths, known.restarts = False, 0, 0
                self._clear(service)
            return
        if known.dead_since is None:  # just found dead
            known.dead_since = now
            known.how = _how(known.process)
            quick = known.process is not None and now - known.since < self.stable
            known.quick_deaths = known.quick_deaths + 1 if quick else 1
            delay = backoff(known.quick_deaths)
            known.next_try = now + delay
            log.warning(
                "supervisor: %s (pid %d) %s; next try in %.0f s",
                *(service.name, pid, known.how, delay),
            )
            if delay:
                self._alert(service, known, pid, f"next try in {delay:.0f} s")
        if now < known.next_try:
            return
        self._start_again(service, known, pid)

    def _start_again(self, service: Service, known: Watched, old_pid: int) -> None:
        kill_leftovers(self.settings, old_pid)
        process = spawn(self.settings, service)
        known.restarts += 1
        known.pid, known.process, known.since = process.pid, process, time.monotonic()
        known.dead_since, known.troubled = None, True
        log.warning("supervisor: started %s again as pid %d", service.name, process.pid)
        self._alert(service, known, old_pid, f"started again as pid {process.pid}")

    def _alert(self, service: Service, known: Watched, dead: int, then: str) -> None:
        looping = known.quick_deaths >= LOOPING
        where = self.settings.log_dir / f"{service.name}.out"
        if looping:
            message = (
                f"{service.name} keeps dying at start (pid {dead} {known.how},"
                f" {known.quick_deaths} times in a row): {then}; see {where}"
            )
        else:
            message = f"{service.name} (pid {dead}) {known.how}: {then}"
            if known.restarts > 1:
                message += f" ({known.restarts} restarts before it ran {self.stable:g} s)"
        severity = alerts.ERROR if looping else alerts.WARNING
        alerts.tell(_cause(service), severity, message)  # the database down: logged

    def _clear(self, service: Service) -> None:
        try:
            with transaction() as session:
                if alerts.clear(session, _cause(service)):
                    log.info("supervisor: %s runs again", service.name)
        except Exception as exc:
            log.error("supervisor: alert not cleared (%s)", exc)


class SupervisorWatch:
    """A look at the home's supervisor, once an interval, from beat and from each worker of
    the home (``by`` names which): one that died is started again, under the home's lock,
    unless a process of the home runs it under another pid (then adopted). A home whose
    supervisor is not recorded (a worker host, ``supervise = false``) is left alone."""

    def __init__(self, by: str) -> None:
        self.by = by
        #: The supervisor this process started, awaited so it is never left a zombie.
        self.process: subprocess.Popen[bytes] | None = None

    def look(self) -> None:
        """One look, logged rather than raised: the watcher goes on whatever happens."""
        try:
            self._look(get_settings())
        except Exception:
            log.exception("could not look at the supervisor")

    def _look(self, settings: Settings) -> None:
        if self.process is not None and self.process.poll() is not None:
            self.process = None
        if recorded_pid(settings, SUPERVISOR) is None:
            return
        service = supervisor_service(settings)
        with home_lock(settings, 0) as held:
            found = recorded_pid(settings, SUPERVISOR) if held else None
            if found is None or alive(*found) or adopt(settings, service):
                return
            try:
                self.process = spawn(settings, service)
            except OSError as exc:
                message = (
                    f"supervisor (pid {found[0]}) died and {self.by} could not start it again"
                    f" ({exc}): services that die are not started again; run `pipeline cluster"
                    f" start` on {HOST}"
                )
                alerts.tell(_cause(service), alerts.ERROR, message)
                return
        log.warning("%s started the supervisor again as pid %d", self.by, self.process.pid)
        alerts.tell(
            _cause(service),
            alerts.WARNING,
            f"supervisor (pid {found[0]}) died: started again as pid {self.process.pid} by"
            f" {self.by}; it starts again the services that died meanwhile",
        )


def backoff(quick_deaths: int) -> float:
    """Seconds to wait before starting again a service that died ``quick_deaths`` times in a
    row before it ran ``stable`` seconds: none the first time, then 1, 2, 4 ... up to
    ``BACKOFF_MAX``."""
    return 0.0 if quick_deaths < 2 else min(2.0 ** (quick_deaths - 2), BACKOFF_MAX)


def _cause(service: Service) -> str:
    return f"process:{service.name}@{HOST}"


def _how(process: subprocess.Popen[bytes] | None) -> str:
    """How a process died, as far as the supervisor can know (only its own children's)."""
    code = process.poll() if process is not None else None
    if code is None:
        return "died"
    if code < 0:
        with_name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return f"was killed by {with_name}"
    return f"exited with status {code}"


def main(argv: list[str]) -> None:
    settings = get_settings()
    if len(argv) != 1 or Path(argv[0]).resolve() != settings.home.resolve():
        sys.exit(f"usage: python -m pipeline.deploy.supervisor {settings.home}")
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=settings.log_dir / "supervisor.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    supervisor = Supervisor(settings)

    def stop(*_: Any) -> None:
        supervisor.stopped.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    supervisor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
