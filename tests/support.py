"""Helpers of the tests: real processes (PostgreSQL, clusters driven through the ``pipeline``
CLI), and a broker and a worker inside the test's own process for the fast tests.

Fixtures live in ``conftest.py``; everything a test module imports lives here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.messaging.messages import Message
from pipeline.operations import queries

PIPELINE = str(Path(sys.executable).parent / "pipeline")
REPO = Path(__file__).resolve().parent.parent
#: Settings that make a test cluster react quickly.
FAST_SETTINGS = {"PIPELINE_RECONCILE_INTERVAL": "1", "PIPELINE_STALE_AFTER": "5"}
#: Exit statuses of ``pipeline wait``: COMPLETED, stopped with errors.
COMPLETED, STOPPED_WITH_ERRORS = 0, 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    # The repository on the path, so workers can import the tests' own algorithms, after
    # any directory a test adds.
    path = os.pathsep.join(filter(None, [extra.pop("PYTHONPATH", ""), str(REPO)]))
    env.update(COLUMNS="200", PYTHONPATH=path, **extra)
    return env


def unavailable(reason: str) -> None:
    """Skip a test whose tools are missing here; in CI (``CI`` set), where ``make test``
    installs every tool, fail it instead: a test that skips there proves nothing."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: nothing may be skipped)")
    pytest.skip(reason)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# -- PostgreSQL ------------------------------------------------------------------------------


@dataclass
class PostgresServer:
    port: int
    base: Path
    pg_ctl: str

    def restart(self) -> None:
        """Stop the server (closing every connection) and start it again on the same port."""
        subprocess.run(
            as_postgres(
                [self.pg_ctl, "-D", str(self.base / "data"), "-l", str(self.base / "server.log")]
                + ["-m", "fast", "-w", "restart"]
            ),
            check=True,
            capture_output=True,
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        import psycopg

        name = f"pipeline_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def postgres_bindir() -> Path:
    """Debian's PostgreSQL programs (the newest version installed)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is missing: `make test` installs it (apt-get install postgresql)")
    return found[-1].parent


def as_postgres(command: list[str]) -> list[str]:
    """``initdb`` refuses to run as root: run PostgreSQL's programs as its own user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server on a free loopback port, stopped afterwards."""
    bindir = postgres_bindir()
    base = Path(tempfile.mkdtemp(prefix="pipeline-pg-", dir="/tmp"))
    base.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    data, port = base / "data", free_port()
    initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
    subprocess.run(
        as_postgres([*initdb, "-E", "UTF8", "--no-sync"]), check=True, capture_output=True
    )
    options = (
        f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={base}"
        " -c fsync=off -c max_connections=200"
    )
    pg_ctl = str(bindir / "pg_ctl")
    log = str(base / "server.log")
    subprocess.run(
        as_postgres([pg_ctl, "-D", str(data), "-w", "-l", log, "-o", options, "start"]),
        check=True,
        capture_output=True,
    )
    try:
        yield PostgresServer(port, base, pg_ctl)
    finally:
        subprocess.run(
            as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "stop"]), capture_output=True
        )
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def redis_server() -> Iterator[str]:
    """A private redis-server on a free loopback port, nothing persisted; its URL."""
    import redis

    port = free_port()
    directory = tempfile.mkdtemp(prefix="pipeline-redis-")
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        + ["--appendonly", "no", "--dir", directory],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"

    def answers() -> bool:
        try:
            return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    try:
        wait_for(answers, what="redis-server")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def silent_host() -> Iterator[tuple[str, threading.Event]]:
    """A broker URL whose host accepts connections and never answers (a hung Redis, a
    firewall swallowing replies), and an event set once it accepted one."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = threading.Event()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(connection)
            accepted.set()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0", accepted
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in [*held, listener]:
            connection.close()


# -- TLS ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    """A throwaway CA, and a server's certificate and key signed by it."""

    ca: Path
    certificate: Path
    key: Path


def make_certificates(directory: Path, address: str = "127.0.0.1") -> Certificates:
    """A throwaway CA and a certificate for a server at ``address`` (its subject
    alternative name, which clients verify), made with ``openssl``."""
    directory.mkdir()
    made = Certificates(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    ca_key, request = directory / "ca.key", directory / "server.csr"
    extensions = directory / "server.ext"
    extensions.write_text(f"subjectAltName=IP:{address}\n")
    for command in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", made.ca],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", made.key, "-out", request],
        ["x509", "-req", "-in", request, "-CA", made.ca, "-CAkey", ca_key, "-CAcreateserial"],
    ):
        subject = ["-subj", f"/CN={address}", "-days", "2"] if command[0] == "req" else []
        extra = ["-out", made.certificate, "-days", "2", "-extfile", extensions]
        arguments = [*command, *(extra if command[0] == "x509" else subject)]
        subprocess.run(["openssl", *map(str, arguments)], check=True, capture_output=True)
    return made


# -- hosts: network namespaces joined by a bridge ------------------------------------------


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def namespaces_unavailable() -> str:
    """Why network namespaces cannot be made here, or '' when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip"):
        return "iproute2 (`ip`) is not installed"
    probe = f"pl-probe-{os.getpid()}"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return ""


@dataclass
class Host:
    """One host: a network namespace with an address on the central bridge; with
    ``own_files``, its own host name, /etc, /opt, /var and /run as well."""

    name: str
    netns: str
    address: str
    logs: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: A process holding the host's own mount namespace (``own_files``), entered by
    #: every command run here.
    anchor: int | None = None

    def command(self, argv: list[str]) -> list[str]:
        if self.anchor is not None:
            enter = ["nsenter", "--target", str(self.anchor), "--mount", "--net", "--uts"]
            return [*enter, "--", *argv]
        return ["ip", "netns", "exec", self.netns, *argv]

    def own_files(self, changes: Path, shared: Path) -> None:
        """Give the host a file system and a host name of its own (its ``name``), as a
        separate machine has: /etc, /opt, /var and /run are this machine's, overlaid with
        the host's changes (kept under ``changes``), so what a doc installs, configures and
        starts there (packages' configuration, /opt, PostgreSQL's data, pid files) is the
        host's alone; ``shared`` is mounted at /srv on every host, as an NFS mount would be.
        The overlays are dropped with the host's last process."""
        holder = ["unshare", "--mount", "--uts", "--propagation", "private", "sleep", "infinity"]
        self.start("files", holder, dict(os.environ))
        anchor = self.processes[-1]
        # ``ip netns exec`` and ``unshare`` exec in turn: the process holds the host's
        # namespaces once it is ``sleep``.
        wait_for(
            lambda: Path(f"/proc/{anchor.pid}/cmdline").read_bytes().startswith(b"sleep\0"),
            what=f"{self.name}'s namespaces",
        )
        self.anchor = anchor.pid
        for directory in ("etc", "opt", "var", "run"):
            upper, work = changes / directory / "upper", changes / directory / "work"
            upper.mkdir(parents=True)
            work.mkdir()
            lower = f"lowerdir=/{directory},upperdir={upper},workdir={work}"
            mount = ["mount", "-t", "overlay", "overlay", "-o", lower, f"/{directory}"]
            subprocess.run(self.command(mount), check=True, capture_output=True)
        bind = ["mount", "--bind", str(shared), "/srv"]
        subprocess.run(self.command(bind), check=True, capture_output=True)
        subprocess.run(self.command(["hostname", self.name]), check=True, capture_output=True)
        # What runs here writes as root: it must write into the host's own files, never
        # into this machine's.
        mounted = {
            line.split()[4]
            for line in Path(f"/proc/{self.anchor}/mountinfo").read_text().splitlines()
        }
        assert mounted >= {"/etc", "/opt", "/var", "/run", "/srv"}, mounted

    def start(self, label: str, argv: list[str], env: dict[str, str]) -> Path:
        """Start a long-running process here; its output goes to a log file, returned."""
        log = self.logs / f"{self.name}-{label}.log"
        with log.open("ab") as output:
            self.processes.append(
                subprocess.Popen(
                    self.command(argv),
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        return log

    def pids(self) -> list[int]:
        """Every process in this host's namespace (what a power cut would stop)."""
        listed = ip("netns", "pids", self.netns, check=False).stdout.split()
        return [int(pid) for pid in listed]

    def kill_everything(self) -> None:
        """SIGKILL every process of the host, then reap the ones this test started."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        for process in self.processes:
            process.kill()
            process.wait(timeout=10)
        wait_for(lambda: not self.pids(), timeout=10, what=f"{self.name} to be empty")


def link_hosts(hosts: list[Host]) -> None:
    """Namespaces joined by veth links to a bridge in the first one (the central host)."""
    for host in hosts:
        ip("netns", "add", host.netns)
        ip("-n", host.netns, "link", "set", "lo", "up")
    central, workers = hosts[0], hosts[1:]
    ip("-n", central.netns, "link", "add", "br0", "type", "bridge")
    ip("-n", central.netns, "addr", "add", f"{central.address}/24", "dev", "br0")
    ip("-n", central.netns, "link", "set", "br0", "up")
    for host in workers:
        port = f"veth-{host.name}"
        ip(
            "-n",
            central.netns,
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "eth0",
            "netns",
            host.netns,
        )
        ip("-n", central.netns, "link", "set", port, "master", "br0", "up")
        ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        ip("-n", host.netns, "link", "set", "eth0", "up")


# -- clusters --------------------------------------------------------------------------------


@dataclass
class Cluster:
    """A cluster under its own PIPELINE_HOME, driven through the ``pipeline`` CLI."""

    home: Path
    env: dict[str, str]
    backend: str
    started: bool = field(default=False)

    def cli(
        self, *args: Any, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [PIPELINE, *map(str, args)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"pipeline {' '.join(map(str, args))} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def json(self, *args: Any) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    @property
    def datastore(self) -> Path:
        return self.home / "datastore"

    def start(self, workers: int = 1) -> None:
        self.cli("cluster", "start", "--workers", workers)
        self.started = True

    def stop(self) -> None:
        self.cli("cluster", "stop", check=False)

    def process(self, name: str) -> dict[str, Any]:
        """The ``cluster status`` row of one process (worker1, beat, redis...)."""
        return next(row for row in self.json("cluster", "status") if row["name"] == name)

    def pid(self, name: str) -> int:
        """The pid of a process ``cluster start`` started, from its pid file (no CLI call:
        quick however busy the machine is)."""
        return int(json.loads((self.home / "run" / f"{name}.pid").read_text())["pid"])

    def kill(self, name: str) -> None:
        """SIGKILL a process of the cluster with all of its children (a worker's pool), and
        wait until it is gone."""
        from pipeline.deploy.cluster import alive

        pid = self.pid(name)
        with suppress(ProcessLookupError):  # killed already, awaited here
            os.killpg(pid, signal.SIGKILL)
        wait_for(lambda: not alive(pid, ()), what=f"{name} to die")

    def submit(self, *args: Any) -> int:
        return int(self.json("submit", "sample", *args)["id"])

    def wait(self, instance: int, expect: int = COMPLETED, timeout: float = 120) -> None:
        """Wait for the instance to stop; ``pipeline wait`` must exit ``expect`` (0 COMPLETED,
        1 stopped with errors), never time out."""
        result = self.cli("wait", instance, "--timeout", timeout, check=False, timeout=timeout + 30)
        assert result.returncode == expect, (
            f"pipeline wait {instance} exited {result.returncode}, not {expect}:\n"
            f"{result.stdout}{result.stderr}{self.log_tails()}"
        )

    def log_tails(self, lines: int = 25) -> str:
        """The last lines of each of the cluster's logs: what a failed wait shows, so a
        failure seen once in a full run can be read afterwards."""
        tails = []
        for log in sorted((self.home / "logs").glob("*.log")):
            kept = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
            tails.append(f"\n--- {log.name} ---\n" + "\n".join(kept[-lines:]))
        return "".join(tails)

    def tasks(self, instance: int) -> list[dict[str, Any]]:
        return self.json("tasks", instance)

    def set_parameters(self, **values: object) -> None:
        """Set values of the sample's ``algorithm`` parameter set (as ``params set``)."""
        assignments = [f"{key}={str(value).lower()}" for key, value in values.items()]
        self.cli("params", "set", "algorithm", *assignments)

    def attempts(self, task_id: int) -> list[int]:
        return [s["attempts"] for s in self.json("subtasks", task_id)]

    def restart(self, *args: Any, check: bool = True) -> list[dict[str, Any]]:
        return json.loads(self.cli("restart", *args, "--json", check=check).stdout)

    def activate(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point this test process's settings, database and Celery app at the cluster."""
        for key, value in self.env.items():
            if key.startswith("PIPELINE_"):
                monkeypatch.setenv(key, value)
        point_here()


def point_here() -> None:
    """Point this process's settings, database engines and Celery app at the environment."""
    from pipeline.database import reset_engines
    from pipeline.messaging.celery_app import celery_app, configure
    from pipeline.settings import reload_settings

    reset_engines()
    configure(celery_app(), reload_settings())


def make_cluster(backend: str, postgres: PostgresServer | None, **settings: str) -> Cluster:
    """A new home, initialised by ``pipeline cluster init`` (SQLite, or a new database on
    ``postgres``); nothing started."""
    home = Path(tempfile.mkdtemp(prefix="pipeline-home-"))
    env = clean_env(PIPELINE_HOME=str(home), **{**FAST_SETTINGS, **settings})
    if backend == "postgres":
        assert postgres is not None
        env["PIPELINE_DATABASE_URL"] = postgres.create_database()
    cluster = Cluster(home=home, env=env, backend=backend)
    cluster.cli("cluster", "init")
    return cluster


@contextmanager
def started_cluster(
    backend: str = "sqlite", postgres: PostgresServer | None = None, **settings: str
) -> Iterator[Cluster]:
    """An initialised and started cluster, stopped and removed afterwards."""
    made = make_cluster(backend, postgres, **settings)
    try:
        made.start()
        yield made
    finally:
        made.stop()
        shutil.rmtree(made.home, ignore_errors=True)


def home_processes(home: Path) -> dict[int, str]:
    """Every live process started for ``home`` (its environment names it, or it runs in
    the home: Redis overwrites its environment with its title), by pid, with its command
    line: what must be gone once the cluster is stopped."""
    wanted = f"PIPELINE_HOME={home}".encode()
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            if wanted not in environ and not Path(os.readlink(proc / "cwd")).is_relative_to(home):
                continue
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if state != "Z":
            found[int(proc.name)] = cmdline
    return found


def session_leaders(home: Path) -> list[str]:
    """The command lines of the home's processes that lead their own session: one per
    service ``cluster start`` started (a worker's pool children share their parent's)."""
    return [cmdline for pid, cmdline in home_processes(home).items() if _session(pid) == pid]


def _session(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def algorithms_running_in(directories: list[Path]) -> bool:
    """Does any process run with its working directory in one of ``directories``?"""
    for proc in Path("/proc").iterdir():
        try:
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if any(cwd.startswith(str(d)) for d in directories):
            return True
    return False


def race(call: Callable[[], object], threads: int = 8) -> None:
    """Run ``call`` in several threads released at once."""
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def run_one() -> None:
        barrier.wait()
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    started = [threading.Thread(target=run_one) for _ in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join()
    assert not errors, errors


#: Execution settings as a hand edit or an older version could have written them: ``Infinity``
#: is not JSON, and no JSON reader reads it.
UNREADABLE_EXECUTION = '{"queue": "default", "subtask_timeout": Infinity, "priority": 5}'


def poison(task_id: int, stored: str = UNREADABLE_EXECUTION) -> None:
    """Write ``stored`` into the task's execution settings column by hand, past every check,
    in the database this process points at."""
    from sqlalchemy import text

    from pipeline.database import transaction

    with transaction() as session:
        session.execute(
            text("UPDATE tasks SET execution = :stored WHERE id = :id"),
            {"stored": stored, "id": task_id},
        )


def stores_per_attempt(events: list[dict[str, Any]]) -> dict[int, int]:
    """How many times each attempt of a task finished storing, from its history: a store
    reached COMPLETE once per attempt at most, however many times its message came."""
    stored: dict[int, int] = {}
    for event in events:
        if event["p_state"] == "COMPLETE" and event["message"].startswith("stored "):
            stored[event["attempt"]] = stored.get(event["attempt"], 0) + 1
    return stored


# -- chaos: processes killed mid-run ------------------------------------------------------------

#: The lease of the chaos clusters: a subtask whose worker is silent 3 s is lost.
LEASE_SECONDS = 3
#: docs/operator-guide.md: lost work is back in flight within one lease and one reconciler
#: interval of the worker's last heartbeat; measured from the kill, through the reconciler's
#: own work on a busy machine, the tests hold it to three leases.
RECOVERY_BOUND = 3 * LEASE_SECONDS
#: A subtask running for less than this is far from its end (the runs pause 3-4 s).
JUST_STARTED = 2.0


@contextmanager
def chaos_cluster(postgres: PostgresServer, workers: int) -> Iterator[Cluster]:
    """A started PostgreSQL cluster for the chaos tests: short leases, no HTTP API or
    Flower, no supervisor; stopped and removed afterwards."""
    made = make_cluster(
        "postgres",
        postgres,
        PIPELINE_LEASE_SECONDS=str(LEASE_SECONDS),
        PIPELINE_CLUSTER_SERVICES="",
        PIPELINE_WORKERS=str(workers),
        # What a chaos test kills stays dead until the test starts it again.
        PIPELINE_SUPERVISE="false",
    )
    try:
        made.start(workers=workers)
        yield made
    finally:
        made.stop()
        shutil.rmtree(made.home, ignore_errors=True)


def permuter_run(cluster: Cluster, pause: int) -> int:
    """Submit the sample's permuter node alone (2 tasks of 4 subtasks), each subtask
    taking ``pause`` seconds, so there is time to break things while it runs; into a
    datastore without earlier runs' outputs."""
    for old in cluster.datastore.glob("set-*/L1"):
        shutil.rmtree(old)
    cluster.set_parameters(execution_pause_seconds=pause)
    return cluster.submit("--end-node", "permuter")


def instance_alerts(cluster: Cluster, instance: int, *flags: str) -> list[dict[str, Any]]:
    """The alerts about one instance (``pipeline alerts``, with ``flags``)."""
    return [a for a in cluster.json("alerts", *flags) if a["instance_id"] == instance]


def just_started(
    worker: Callable[[Any], bool] = lambda _: True, within: float = JUST_STARTED
) -> list[dict[str, Any]]:
    """Subtasks running for less than ``within`` seconds (on ``worker``), newest first:
    killed now, they are surely killed mid-run, not after they finished."""
    from datetime import timedelta

    from sqlalchemy import select

    from pipeline.database import transaction
    from pipeline.domain.models import Subtask, utcnow
    from pipeline.domain.states import SubtaskState

    since = utcnow() - timedelta(seconds=within)
    with transaction() as session:
        found = session.scalars(
            select(Subtask)
            .where(Subtask.state == SubtaskState.RUNNING, Subtask.started_at > since)
            .order_by(Subtask.started_at.desc())
        )
        return [
            {
                "task_id": s.task_id,
                "index": s.index,
                "attempts": s.attempts,
                "worker_host": s.worker_host,
            }
            for s in found
            if worker(s)
        ]


def assert_completed_exactly_once(cluster: Cluster, instance: int) -> None:
    """COMPLETED, every count right, each task stored once (its history says so), and each
    permuted image in the datastore with its pixels. Read from the cluster's database,
    which this process points at (``Cluster.activate``)."""

    cluster.wait(instance, timeout=180)
    tasks = queries.list_tasks(instance)
    assert [(t["p_state"], t["error"], t["counts"]) for t in tasks] == [
        ("COMPLETE", False, "4/4 (0)")
    ] * 2
    for task in tasks:
        assert [s["state"] for s in queries.list_subtasks(task["id"])] == ["COMPLETE"] * 4
        events = queries.get_task(task["id"])["history"]
        assert stores_per_attempt(events) == {task["attempt"]: 1}, "one store per attempt"
    assert_sample_outputs(cluster.datastore, levels=("L1",))


def back_in_flight(lost: dict[str, Any], since: float) -> float:
    """Wait until a lost subtask is dispatched again (queued, or run by another worker
    process); returns the seconds it took, held to the operator guide's bound."""

    task_id, index = lost["task_id"], lost["index"]

    def dispatched_again() -> bool:
        now = queries.list_subtasks(task_id)[index]
        return now["state"] == "QUEUED" or now["attempts"] > lost["attempts"]

    wait_for(dispatched_again, what=f"subtask {task_id}/{index} dispatched again")
    detected = time.monotonic() - since
    print(f"lost subtask {task_id}/{index} back in flight after {detected:.1f} s")
    assert detected <= RECOVERY_BOUND, f"back in flight after {detected:.1f} s"
    return detected


def queued_on_broker(broker: Any) -> int:
    """Subtask messages waiting in the broker's queue lists (one list per priority)."""
    return sum(broker.llen(key) for key in broker.keys("default*"))


# -- in process: a broker and a worker inside the test ----------------------------------------

#: The worker name the in-process worker records as a subtask's host.
IN_PROCESS_HOST = "worker1@in-process"


class InProcessWorker:
    """A broker and a worker in the test's own process, for the fast tests: no Redis.

    The broker is the product's own in-memory publisher (``MemoryPublisher``), installed
    as this process's publisher while the worker is in use (``with InProcessWorker() as
    worker``): what the pipeline publishes is queued there, its arguments through JSON as
    on the wire, and ``drain`` runs each message through the same Celery task function a
    worker runs, in the order published, algorithms in forked children as always. A
    revoked message leaves the queue; ``lose`` drops messages as a broker losing its
    queue would.
    """

    def __init__(self) -> None:
        import workers.app  # noqa: F401 - registers the Celery tasks this worker runs
        from pipeline.messaging.memory import MemoryPublisher

        self.broker = MemoryPublisher()
        #: The messages that ended as a Celery failure, with their exception text.
        self.failed: dict[str, str] = {}
        self._replaced: Any = None

    def __enter__(self) -> InProcessWorker:
        from pipeline.messaging.publisher import use_publisher

        self._replaced = use_publisher(self.broker)
        return self

    def __exit__(self, *_: object) -> None:
        from pipeline.messaging.publisher import use_publisher

        use_publisher(self._replaced)

    @property
    def queue(self) -> list[Message]:
        """The messages waiting, oldest first (the list itself: a test may take one)."""
        return self.broker.queue

    @property
    def published(self) -> list[Message]:
        return self.broker.published

    @property
    def revoked(self) -> list[str]:
        return self.broker.revoked

    def send(self, name: str, args: list[Any], queue: str = "default") -> None:
        """Queue a message as if published: a duplicate, or one from an older chain."""
        self.broker.publish([Message(name, args, queue)])

    def lose(self, keep: Callable[[Message], bool] = lambda _: False) -> list[Message]:
        """Drop the queued messages ``keep`` does not keep, as a broker losing its queue."""
        lost = [m for m in self.queue if not keep(m)]
        self.broker.queue[:] = [m for m in self.queue if keep(m)]
        return lost

    def run_next(self) -> Message:
        """Run the oldest queued message as a worker would."""
        from pipeline.messaging.celery_app import celery_app
        from workers.chain import RecordedFailure

        message = self.queue.pop(0)
        task = celery_app().tasks[message.name]
        task.push_request(id=message.id, hostname=IN_PROCESS_HOST, args=message.args)
        try:
            task.run(*message.args)
        except RecordedFailure as exc:  # a worker marks the message FAILURE and acks it
            self.failed[str(message.id)] = str(exc)
        finally:
            task.pop_request()
        return message

    def drain(self, limit: int = 10_000) -> list[Message]:
        """Run messages until none is queued; the messages run, in order."""
        ran = []
        while self.queue:
            assert len(ran) < limit, f"more than {limit} messages: a loop?"
            ran.append(self.run_next())
        return ran

    def names(self) -> list[str]:
        """The short names of the messages published so far (``marshal``, ``subtask``...)."""
        return [m.name.rsplit(".", 1)[-1] for m in self.published]


#: Longer than any lease or staleness limit of the settings.
LONG_AGO = timedelta(hours=1)


def age(task_id: int) -> None:
    """Make the task's step lease and its subtasks' heartbeats an hour old."""
    from sqlalchemy import update

    from pipeline.database import transaction
    from pipeline.domain.models import Subtask, Task, utcnow

    with transaction() as session:
        session.execute(
            update(Task).where(Task.id == task_id).values(updated_at=utcnow() - LONG_AGO)
        )
        session.execute(
            update(Subtask)
            .where(Subtask.task_id == task_id, Subtask.heartbeat_at.is_not(None))
            .values(heartbeat_at=utcnow() - LONG_AGO)
        )


def taken_by_a_dying_worker(
    worker: InProcessWorker, task_id: int, index: int, attempt: int = 1
) -> None:
    """A worker took the subtask's message, started it, and died: its message is gone and
    its lease will lapse."""
    from pipeline.engine import stages
    from pipeline.engine.leases import Claim

    [message] = [m for m in worker.queue if m.args[:3] == [task_id, attempt, index]]
    worker.queue.remove(message)
    number = message.args[3]
    assert stages.begin_subtasks([Claim(task_id, attempt, index, number)], host="worker9@gone")


# -- the sample pipeline's outputs -----------------------------------------------------------

#: The tasks of the sample as a clean run leaves them: node, unit of work, state, counts.
SAMPLE_COMPLETED = [
    ("permuter", "set-1", "COMPLETE", "4/4 (0)"),
    ("permuter", "set-2", "COMPLETE", "4/4 (0)"),
    ("flip", "set-1", "COMPLETE", "4/4 (0)"),
    ("flip", "set-2", "COMPLETE", "4/4 (0)"),
    ("averaging", "set-1", "COMPLETE", "1/1 (0)"),
    ("averaging", "set-2", "COMPLETE", "1/1 (0)"),
]


def rows(tasks: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """Tasks as (node, unit of work, state, counts), as ``SAMPLE_COMPLETED`` lists them."""
    return [(t["node"], t["unit_of_work"], t["state"], t["counts"]) for t in tasks]


def read_image(path: Path) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def expected_outputs(set_number: int) -> dict[str, Any]:
    """Every output of one set of the sample, computed here, independently of the pipeline."""
    import numpy as np

    from pipeline.sample.algorithms import CHANNEL_ORDER
    from pipeline.sample.images import IMAGES_PER_SET, pixels

    outputs: dict[str, Any] = {}
    flipped = []
    for image in range(IMAGES_PER_SET):
        permuted = pixels(set_number, image)[..., CHANNEL_ORDER]
        stem = f"nasa-logo-file-{image}-perm"
        outputs[f"L1/{stem}.png"] = permuted
        outputs[f"L2/{stem}-lr.png"] = np.fliplr(permuted)
        outputs[f"L2/{stem}-ud.png"] = np.flipud(permuted)
        flipped += [np.fliplr(permuted), np.flipud(permuted)]
    outputs["L3/averaged-image.png"] = np.rint(np.mean(np.stack(flipped).astype(float), axis=0))
    return outputs


def assert_sample_outputs(
    datastore: Path,
    images: dict[str, tuple[int, ...]] | None = None,
    levels: tuple[str, ...] = ("L1", "L2", "L3"),
) -> None:
    """The datastore holds exactly the sample's outputs of each set at ``levels``, pixel for
    pixel; with ``images`` (set -> image numbers), only those images' outputs and their
    average."""
    import numpy as np

    from pipeline.sample.images import IMAGES_PER_SET, SETS

    for set_number, set_name in enumerate(SETS, start=1):
        kept = (images or {}).get(set_name, tuple(range(IMAGES_PER_SET)))
        expected = {
            name: array
            for name, array in expected_outputs(set_number).items()
            if name.startswith("L3") or int(name.split("-")[3]) in kept
        }
        flipped = [expected[n] for n in sorted(expected) if n.startswith("L2")]
        expected["L3/averaged-image.png"] = np.rint(
            np.mean(np.stack(flipped).astype(float), axis=0)
        )
        expected = {name: a for name, a in expected.items() if name.split("/")[0] in levels}
        stored = {
            str(path.relative_to(datastore / set_name))
            for level in levels
            for path in (datastore / set_name / level).iterdir()
        }
        assert stored == set(expected), "exactly the outputs, no temporary files"
        for name, array in expected.items():
            np.testing.assert_array_equal(read_image(datastore / set_name / name), array)


def snapshot(instance: int) -> list[Any]:
    """Everything a stale message could change: the instance's tasks, every subtask, the
    history's length."""
    from sqlalchemy import func, select

    from pipeline.database import transaction
    from pipeline.domain.models import Subtask, Task, TaskEvent

    with transaction() as session:
        tasks = session.execute(
            select(
                Task.id,
                Task.p_state,
                Task.error,
                Task.attempt,
                Task.completed_subtasks,
                Task.failed_subtasks,
            )
            .where(Task.instance_id == instance)
            .order_by(Task.id)
        ).all()
        subtasks = session.execute(
            select(Subtask.id, Subtask.state, Subtask.attempts, Subtask.dispatch).order_by(
                Subtask.id
            )
        ).all()
        events = session.scalar(select(func.count(TaskEvent.id)))
    return [tasks, subtasks, events]


def roll_back_to_permuter_done(instance: int) -> None:
    """The instance as it was when its permuter tasks had just stored: later nodes pending."""
    from sqlalchemy import delete, select

    from pipeline.database import transaction
    from pipeline.domain.models import (
        DatastoreFile,
        FileConsumption,
        InstanceNode,
        Subtask,
        Task,
        TaskAttempt,
        TaskEvent,
    )

    with transaction() as session:
        later = select(Task.id).where(Task.instance_id == instance, Task.node != "permuter")
        session.execute(delete(TaskEvent).where(TaskEvent.task_id.in_(later)))
        session.execute(delete(TaskAttempt).where(TaskAttempt.task_id.in_(later)))
        session.execute(delete(FileConsumption).where(FileConsumption.task_id.in_(later)))
        session.execute(delete(DatastoreFile).where(DatastoreFile.task_id.in_(later)))
        session.execute(delete(Subtask).where(Subtask.task_id.in_(later)))
        session.execute(delete(Task).where(Task.id.in_(later.scalar_subquery())))
        for row in session.scalars(
            select(InstanceNode).where(InstanceNode.instance_id == instance)
        ):
            row.state = "DONE" if row.node == "permuter" else "PENDING"


def run_cli(capsys: pytest.CaptureFixture[str], *args: Any) -> subprocess.CompletedProcess[str]:
    """Run ``pipeline ARGS`` in this process, through the command's own ``main``: its exit
    status and what it printed."""
    from pipeline.interfaces.cli import main
    from pipeline.settings import get_settings

    get_settings.cache_clear()  # read afresh, as a new process would
    capsys.readouterr()
    argv = sys.argv
    sys.argv = ["pipeline", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = argv
    printed = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, printed.out, printed.err)


def assert_ledger_matches_bytes(datastore: Path) -> int:
    """Every current version the ledger records (stored, not being placed, not pruned) is
    at its path with the bytes of its checksum; how many were checked. Read from the
    database this process points at."""
    import hashlib

    from sqlalchemy import select

    from pipeline.database import transaction
    from pipeline.domain.models import DatastoreFile

    with transaction() as session:
        current = session.execute(
            select(DatastoreFile.path, DatastoreFile.sha256).where(
                DatastoreFile.superseded_at.is_(None),
                DatastoreFile.placing.is_(False),
                DatastoreFile.pruned_at.is_(None),
            )
        ).all()
    wrong = [
        path
        for path, sha in current
        if hashlib.sha256((datastore / path).read_bytes()).hexdigest() != sha
    ]
    assert not wrong, f"current versions whose bytes differ from the ledger: {wrong[:5]}"
    return len(current)


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (a Celery worker's pool processes)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with suppress(OSError, IndexError, ValueError):
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid and fields[0] != "Z":
                    found.append(int(proc.name))
    return sorted(found)


# -- small disks --------------------------------------------------------------------------------


@contextmanager
def tmpfs(where: Path, megabytes: int) -> Iterator[Path]:
    """A tmpfs of ``megabytes`` mounted at ``where`` (made if missing), unmounted after."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(where: Path) -> Path:
    """Fill the file system of ``where`` to the last byte; the filler, to remove."""
    filler = where / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 1):
            with suppress(OSError):
                while os.write(descriptor, b"\0" * size):
                    pass
    finally:
        os.close(descriptor)
    return filler
