"""The chaos soak's driver: for a set time, instances of the sample pipeline are submitted
and their failed tasks restarted while faults are injected: a worker killed whole, a pool
process killed, beat, Redis, the HTTP API and the supervisor killed, the broker's queues
dropped, Redis's disk filled and freed; now and then two at once (a worker killed while
Redis is down, or while its supervisor is), the second before the first is recovered from.
Some instances fail a subtask on purpose (``throw_exception_subtask_0``, frozen in each
instance), and the driver restarts them as an operator would, in each restart mode in turn,
resume-current-step last (it stores the good subtasks and lets the instance finish);
resume-monitoring is asked of an executing task after a fault that loses work.

Each fault's recovery is timed; at the end every instance must have finished, no task
attempt stored twice, every current ledger row match its bytes, every fault have its alert
and every alert a fault (``tests/test_soak.py``, ``make soak``).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import statistics
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline.deploy.cluster import alive
from pipeline.messaging.publisher import publisher
from pipeline.operations import queries
from tests.support import (
    Cluster,
    assert_ledger_matches_bytes,
    children_of,
    fill,
    just_started,
    queued_on_broker,
    stores_per_attempt,
)

#: Every kind of fault, in the order the short soak injects them.
KINDS = ("worker", "pool", "beat", "redis", "api", "supervisor", "queue", "disk")
#: Kinds injected two at once now and then (a killed process each): the second before the
#: first is recovered from.
OVERLAPPING = ("worker", "pool", "beat", "redis", "api", "supervisor")
#: The faults at once the short soak injects after each kind alone.
PAIRS = (("redis", "worker"), ("supervisor", "worker"))
#: The share of rounds that inject two faults at once.
OVERLAP = 0.3
#: The share of instances submitted to fail subtask 0 of each permuter task.
FAILING = 0.3
#: The restart modes a failing instance goes through, as an operator would try them:
#: the first two fail subtask 0 again (its parameters are frozen), the last stores the
#: three good subtasks and lets the instance go on.
FAILING_RESTARTS = ("resubmit", "restart-from-beginning", "resume-current-step")
#: The steps in which resume-monitoring takes a task.
EXECUTING = ("ALGORITHM_QUEUED", "ALGORITHM_EXECUTING")
#: What waits for a fault's recovery and its alert, once it is injected.
Settle = Callable[[], None]
#: The longest a fault may take to be recovered from, and its alert to show.
RECOVERY_TIMEOUT = 90.0
#: Seconds each subtask pauses in the instance the soak asks resume-monitoring of at the
#: end, when no fault met an executing task.
SLOW_PAUSE = 4
#: Instances running at once while the soak goes on.
ACTIVE = 2
#: What each kind of fault may make the system say (its own alert, and what it may
#: cause downstream), as patterns: an alert raised while a fault is out or just after,
#: matching none of them, is an alert without a fault.
EXPLAINS: dict[str, tuple[str, ...]] = {
    "worker": (
        r"^worker\d+ (\(pid \d+\)|keeps dying)",
        "silent since",
        "lost, dispatched again",
        "messages lost",
        "had no news",
        "marshaling lost",
        "no worker consumes queue",
        "pool process",
    ),
    "pool": ("pool process", "lost, dispatched again", "messages lost", "had no news"),
    "beat": (r"^beat (\(pid \d+\)|keeps dying)", "reconciler not running"),
    "redis": (
        r"^redis (\(pid \d+\)|keeps dying)",
        # What dies when Redis does is started again too.
        r"\(pid \d+\) .*: started again as pid",
        "broker unreachable",
        "messages lost",
        "had no news",
        "lost, dispatched again",
        "marshaling lost",
    ),
    "api": (r"^api (\(pid \d+\)|keeps dying)",),
    "supervisor": (r"^supervisor \(pid \d+\) died",),
    "queue": ("messages lost", "had no news", "lost, dispatched again"),
    "disk": (
        "cannot write to its disk",
        # A worker dies on Redis's MISCONF (Celery: "Unrecoverable error"): started again.
        r"\(pid \d+\) .*: started again as pid",
        "keeps dying at start",
        "messages lost",
        "had no news",
        "lost, dispatched again",
        "marshaling lost",
    ),
}
#: Alerts about the data, not about a fault (a concurrent instance's newer versions).
ABOUT_DATA = ("stale:", "supersedes version", "produced no output")


@dataclass
class Fault:
    kind: str
    target: str
    at: str
    #: Injected with another fault, before that one was recovered from.
    overlapped: bool = False
    #: Seconds from injection to recovery (the service back, the lost work sent again).
    recovery: float | None = None
    #: The alert that says it, as raised.
    alert: str = ""


@dataclass
class Report:
    seconds: float
    faults: list[Fault] = field(default_factory=list)
    instances: dict[str, int] = field(default_factory=dict)
    submits_refused: int = 0
    #: Instances submitted to fail subtask 0.
    failing_instances: int = 0
    #: Restarts accepted, by mode.
    restarts: dict[str, int] = field(default_factory=dict)
    restarts_refused: int = 0
    #: Each refused restart: its mode and the one line it answered.
    refusals: list[str] = field(default_factory=list)
    unexplained_alerts: list[str] = field(default_factory=list)
    data_alerts: int = 0
    ledger_rows_checked: int = 0
    stored_twice: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        times = sorted(f.recovery for f in self.faults if f.recovery is not None)
        by_kind: dict[str, list[float]] = {}
        for fault in self.faults:
            if fault.recovery is not None:
                by_kind.setdefault(fault.kind, []).append(fault.recovery)
        return {
            "faults_injected": len(self.faults),
            "faults_recovered": len(times),
            "faults_alerted": sum(bool(f.alert) for f in self.faults),
            "faults_overlapped": sum(f.overlapped for f in self.faults),
            "recovery_p50_s": round(statistics.median(times), 1) if times else None,
            "recovery_p95_s": round(_p95(times), 1) if times else None,
            "recovery_max_s": round(max(times), 1) if times else None,
            "by_kind": {
                kind: {"count": len(found), "p50_s": round(statistics.median(found), 1)}
                for kind, found in sorted(by_kind.items())
            },
            "false_alerts": len(self.unexplained_alerts),
            "instances": self.instances,
            "submits_refused": self.submits_refused,
            "failing_instances": self.failing_instances,
            "restarts": sum(self.restarts.values()),
            "restarts_by_mode": dict(sorted(self.restarts.items())),
            "restarts_refused": self.restarts_refused,
            "ledger_rows_checked": self.ledger_rows_checked,
            "stored_twice": len(self.stored_twice),
        }

    def as_json(self) -> str:
        return json.dumps(
            {"figures": self.figures(), **asdict(self)}, indent=2, default=str, sort_keys=False
        )


def _explains(fault: Fault, at: datetime, message: str) -> bool:
    """Could ``fault`` have caused an alert raised at ``at`` saying ``message``?"""
    injected = datetime.fromisoformat(fault.at)
    window = timedelta(seconds=RECOVERY_TIMEOUT + 60)
    return injected <= at <= injected + window and any(
        re.search(pattern, message) for pattern in EXPLAINS[fault.kind]
    )


def _p95(times: list[float]) -> float:
    return times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]


def _now() -> datetime:
    return datetime.now(UTC)


def _wait(condition: Callable[[], Any], timeout: float = RECOVERY_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(Exception):  # a service being killed answers with errors meanwhile
            found = condition()
            if found:
                return found
        time.sleep(0.1)
    return None


class Soak:
    """One soak over a started cluster (supervised, its Redis directory on ``redis_disk``,
    a tmpfs), this process pointed at its database."""

    def __init__(self, cluster: Cluster, redis_disk: Path, seconds: float, seed: int) -> None:
        self.cluster = cluster
        self.redis_disk = redis_disk
        self.seconds = seconds
        self.random = random.Random(seed)
        self.report = Report(seconds)
        self.submitted: list[int] = []
        #: The restart modes each failing instance has still to go through.
        self.failing: dict[int, list[str]] = {}
        self.started = _now()
        self.broker = None

    # -- the run -------------------------------------------------------------------------

    def run(self) -> Report:
        """Faults until the time is up (each kind once, in order, then ``PAIRS``, for a
        soak of 0 s), then the instances finished and every invariant checked into the
        report."""
        from pipeline.messaging.broker import broker_client

        self.broker = broker_client()
        self.cluster.set_parameters(execution_pause_seconds=1)
        deadline = time.monotonic() + self.seconds
        order: list[tuple[str, ...]] = [(kind,) for kind in KINDS] + list(PAIRS)
        while order or time.monotonic() < deadline:
            kinds = order.pop(0) if order else self._draw()
            self._keep_busy()
            done = self._progress()
            settles = [self._inject(kind) for kind in kinds]
            for fault in self.report.faults[-len(kinds) :] if len(kinds) > 1 else []:
                fault.overlapped = True
            for settle in settles:
                settle()
            self._operate(kinds)
            # The work goes on before the next fault: a subtask more completes.
            _wait(lambda done=done: self._progress() > done, 60)
        if "resume-monitoring" not in self.report.restarts:
            self._resume_monitoring_once()
        self._finish()
        self._check()
        return self.report

    def _draw(self) -> tuple[str, ...]:
        """One fault at random, or two that overlap (``OVERLAP`` of the rounds)."""
        if self.random.random() < OVERLAP:
            return tuple(self.random.sample(OVERLAPPING, 2))
        return (self.random.choice(KINDS),)

    def _keep_busy(self) -> None:
        """Submit instances until ``ACTIVE`` run (a refused submit is counted: the broker
        may be down), the first and ``FAILING`` of the others failing subtask 0; wait until
        a subtask runs, so each fault meets work in flight."""
        running = [i for i in self.submitted if self._state(i) not in FINISHED]
        for _ in range(ACTIVE - len(running)):
            failing = not self.failing or self.random.random() < FAILING
            if failing:
                self.cluster.set_parameters(throw_exception_subtask_0=True)
            try:
                result = self.cluster.cli("submit", "sample", "--json", check=False)
            finally:
                if failing:
                    self.cluster.set_parameters(throw_exception_subtask_0=False)
            if result.returncode:
                self.report.submits_refused += 1
                assert "Traceback" not in result.stderr, result.stderr
                continue
            instance = int(json.loads(result.stdout)["id"])
            self.submitted.append(instance)
            if failing:
                first_two = self.random.sample(FAILING_RESTARTS[:2], 2)
                self.failing[instance] = [*first_two, FAILING_RESTARTS[2]]
                self.report.failing_instances += 1
        _wait(lambda: just_started(within=3600), 20)

    def _progress(self) -> int:
        """Subtasks completed in the soak's instances so far."""
        return sum(
            int(task["counts"].split("/")[0])
            for instance in self.submitted
            for task in queries.list_tasks(instance)
        )

    def _state(self, instance: int) -> str:
        return str(queries.get_instance(instance)["state"])

    def _operate(self, kinds: tuple[str, ...]) -> None:
        """What an operator does after a fault: the failed tasks of stopped instances run
        again, and, after a fault that loses work, monitoring resumed on an executing task."""
        self._restart_failed()
        if any("messages lost" in EXPLAINS[kind] for kind in kinds):
            self._resume_monitoring()

    def _restart_failed(self) -> None:
        """The failed tasks of a stopped instance run again: a failing one's in its next
        mode, any other's with resubmit (what a fault made fail)."""
        for instance in self.submitted:
            if self._state(instance) != "ERRORS_STALLED":
                continue
            modes = self.failing.get(instance, [])
            if self._restart("--instance", instance, mode=modes[0] if modes else "resubmit"):
                del modes[:1]

    def _resume_monitoring(self) -> None:
        """Monitoring resumed on the first executing task found (none may be: a refusal)."""
        for instance in reversed(self.submitted):
            for task in queries.list_tasks(instance):
                if task["p_state"] in EXECUTING and not task["error"]:
                    self._restart(task["id"], mode="resume-monitoring")
                    return

    def _resume_monitoring_once(self) -> None:
        """Monitoring resumed at least once: a soak whose faults met no executing task (its
        work had moved on each time) asks it of an instance of its own, whose subtasks
        pause ``SLOW_PAUSE`` seconds: its task is still executing when the command runs,
        however slow the machine (a task of 1 s subtasks had ended by then, under load)."""
        self.cluster.set_parameters(execution_pause_seconds=SLOW_PAUSE)
        try:
            found = _wait(lambda: self.cluster.json("submit", "sample"))
        finally:
            self.cluster.set_parameters(execution_pause_seconds=1)
        instance = int(found["id"])
        self.submitted.append(instance)

        def asked() -> bool:
            for task in queries.list_tasks(instance):
                if task["p_state"] in EXECUTING and not task["error"]:
                    self._restart(task["id"], mode="resume-monitoring")
                    break
            return "resume-monitoring" in self.report.restarts

        _wait(asked)

    def _restart(self, *what: object, mode: str) -> bool:
        """``pipeline restart`` as an operator types it; whether it was accepted (one
        refused, the broker down or the task moved on meanwhile, is counted)."""
        result = self.cluster.cli("restart", *what, "--mode", mode, "--json", check=False)
        assert "Traceback" not in result.stderr, result.stderr
        if result.returncode:
            self.report.restarts_refused += 1
            said = result.stderr.strip()  # refused whole (one line), or task by task
            with suppress(ValueError):
                said = "; ".join(o["message"] for o in json.loads(result.stdout) if not o["ok"])
            self.report.refusals.append(f"{mode}: {said}")
            return False
        self.report.restarts[mode] = self.report.restarts.get(mode, 0) + 1
        return True

    # -- faults --------------------------------------------------------------------------

    def _inject(self, kind: str) -> Settle:
        """Inject a fault of ``kind``; what waits for its recovery and its alert."""
        settle: Settle = getattr(self, f"_fault_{kind}")()
        return settle

    def _record(self, kind: str, target: str) -> Fault:
        fault = Fault(kind, target, _now().isoformat(timespec="seconds"))
        self.report.faults.append(fault)
        return fault

    def _recovered(
        self, fault: Fault, injected: float, back: Callable[[], Any], expect: str
    ) -> None:
        """Wait until ``back`` holds (the recovery, timed) and an alert saying ``expect``
        shows."""
        if _wait(back):
            fault.recovery = round(time.monotonic() - injected, 2)
        alert = _wait(lambda: self._alert_saying(expect, injected))
        fault.alert = alert or ""

    def _alert_saying(self, fragment: str, since: float) -> str:
        """An alert saying ``fragment`` raised since ``since`` (monotonic; alerts are
        dated to the second)."""
        after = _now() - timedelta(seconds=time.monotonic() - since)
        floor = after.isoformat(timespec="seconds")
        for alert in queries.list_alerts(include_acknowledged=True):
            if fragment in alert["message"] and alert["at"] >= floor:
                return str(alert["message"])
        return ""

    def _kill_service(self, kind: str, name: str) -> Settle:
        pid = self.cluster.pid(name)
        injected = time.monotonic()
        with suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        fault = self._record(kind, name)

        def back() -> bool:
            now = self.cluster.pid(name)
            return now != pid and alive(now, ())

        return lambda: self._recovered(fault, injected, back, f"(pid {pid}")

    def _fault_worker(self) -> Settle:
        return self._kill_service("worker", self.random.choice(self._workers()))

    def _fault_beat(self) -> Settle:
        return self._kill_service("beat", "beat")

    def _fault_redis(self) -> Settle:
        return self._kill_service("redis", "redis")

    def _fault_api(self) -> Settle:
        return self._kill_service("api", "api")

    def _fault_supervisor(self) -> Settle:
        """The supervisor killed: beat or a worker starts it again."""
        return self._kill_service("supervisor", "supervisor")

    def _fault_pool(self) -> Settle:
        name = self.random.choice(self._workers())
        worker = self.cluster.pid(name)
        pool = _wait(lambda: children_of(worker), 10) or []
        if not pool:
            return self._fault_worker()
        victim = self.random.choice(pool)
        injected = time.monotonic()
        with suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
        fault = self._record("pool", f"{name} pool process {victim}")

        def back() -> bool:
            now = self.cluster.pid(name)  # the worker itself may be going down meanwhile
            return victim not in children_of(now) and bool(children_of(now))

        def settle() -> None:
            self._recovered(fault, injected, back, str(victim))
            if not fault.alert and self.cluster.pid(name) != worker:
                # The worker was going down already (another fault: Redis refusing writes
                # makes Celery exit, or it was killed too): its pool went with it, and its
                # restart is the alert.
                fault.alert = self._alert_saying(f"(pid {worker}", injected - RECOVERY_TIMEOUT)

        return settle

    def _fault_queue(self) -> Settle:
        """Every message waiting in the broker's queues deleted behind the system's back,
        once some wait there."""
        assert self.broker is not None
        if not _wait(lambda: queued_on_broker(self.broker) > 0, 20):
            return self._fault_worker()
        injected = time.monotonic()
        dropped = sum(self.broker.delete(key) for key in self.broker.keys("default*"))
        fault = self._record("queue", f"{dropped} queue keys")

        def settle() -> None:
            # Recovered once the reconciler says it sent the lost work again.
            found = _wait(lambda: self._resent_since(injected))
            if found:
                fault.recovery = round(time.monotonic() - injected, 2)
                fault.alert = found

        return settle

    def _resent_since(self, injected: float) -> str:
        for fragment in ("messages lost", "had no news", "lost, dispatched again"):
            if said := self._alert_saying(fragment, injected):
                return said
        return ""

    def _fault_disk(self) -> Settle:
        """Redis's disk filled to the last byte for a few seconds, then freed."""
        injected = time.monotonic()
        filler = fill(self.redis_disk)
        fault = self._record("disk", "redis's disk")

        def settle() -> None:
            # Work goes on, and Redis fails to persist it.
            _wait(lambda: publisher().persistence_problem(), 30)
            said = _wait(lambda: self._alert_saying("cannot write to its disk", injected))
            fault.alert = said or ""
            filler.unlink()
            # Recovered once Redis writes again and its alert is cleared.
            if _wait(lambda: publisher().persistence_problem() is None and self._disk_cleared()):
                fault.recovery = round(time.monotonic() - injected, 2)

        return settle

    def _disk_cleared(self) -> bool:
        return all(
            a["cleared_at"]
            for a in queries.list_alerts(include_acknowledged=True)
            if "cannot write to its disk" in a["message"]
        )

    def _workers(self) -> list[str]:
        return sorted(p.stem for p in (self.cluster.home / "run").glob("worker*.pid"))

    # -- the end -------------------------------------------------------------------------

    def _finish(self) -> None:
        """No more faults: every instance finishes (its failed tasks restarted as an
        operator would, a failing instance through its restart modes), within a bound."""
        for _ in range(len(FAILING_RESTARTS) + 3):
            for instance in self.submitted:
                self.cluster.cli("wait", instance, "--timeout", 300, check=False, timeout=330)
            if all(self._state(instance) == "COMPLETED" for instance in self.submitted):
                break
            self._restart_failed()
        states: dict[str, int] = {}
        for instance in self.submitted:
            state = self._state(instance)
            states[state] = states.get(state, 0) + 1
        self.report.instances = states

    def _check(self) -> None:
        report = self.report
        for instance in self.submitted:
            for task in queries.list_tasks(instance):
                history = queries.get_task(task["id"])["history"]
                twice = {a: n for a, n in stores_per_attempt(history).items() if n > 1}
                if twice:
                    report.stored_twice.append(f"task {task['id']}: {twice}")
        report.ledger_rows_checked = assert_ledger_matches_bytes(self.cluster.datastore)
        for alert in queries.list_alerts(include_acknowledged=True):
            at = datetime.fromisoformat(alert["at"])
            if at < self.started:
                continue
            message = alert["message"]
            if any(word in message for word in ABOUT_DATA):
                report.data_alerts += 1
            elif not any(_explains(fault, at, message) for fault in report.faults):
                report.unexplained_alerts.append(f"{alert['at']} {message}")


#: An instance that has stopped, one way or the other.
FINISHED = ("COMPLETED", "ERRORS_STALLED", "TRANSITION_FAILED")
