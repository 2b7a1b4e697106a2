"""A local cluster under PIPELINE_HOME: private redis-server, Celery workers, beat, the HTTP
API, Flower, and the worker of the operations run through Flower.

``start`` starts only what is not running, ``stop`` stops only what ``start`` started
(found by the pid files under ``PIPELINE_HOME/run``, each checked against the process's
command line so a recycled pid is never signalled). Each service leads a process group of
its own, so stopping it ends its children too (a worker's pool, an algorithm's process).
Both hold the home's lock: two starts at once would otherwise each start every service.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from pipeline import database
from pipeline.domain import definitions
from pipeline.domain.execution import DEFAULT_QUEUE
from pipeline.errors import PipelineError, Refused
from pipeline.messaging.celery_app import OPERATIONS_QUEUE, celery_app, configure
from pipeline.messaging.publisher import publisher
from pipeline.settings import (
    API_PREFIX,
    CELERY_APP,
    HEALTHZ,
    Settings,
    get_settings,
    reload_settings,
    write_settings_file,
)

#: Seconds a service gets to become ready after it is started.
READY_TIMEOUT = 60.0
#: Seconds a service gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 30.0
POLL = 0.1
#: Ports chosen for a home lie from here up to the kernel's first ephemeral port.
LOWEST_CHOSEN_PORT = 10000
EPHEMERAL_PORTS = "/proc/sys/net/ipv4/ip_local_port_range"
DEFAULT_FIRST_EPHEMERAL_PORT = 32768
PORT_TRIES = 100
#: Seconds a start or stop waits for another one of the same home to finish.
LOCK_TIMEOUT = 3 * READY_TIMEOUT
#: The name of the process that starts the others again when they die.
SUPERVISOR = "supervisor"
#: Commands of the private Redis that no client needs, and that another user of the host
#: must not run.
REFUSED_REDIS_COMMANDS = ("CONFIG", "DEBUG", "FLUSHALL", "FLUSHDB", "SHUTDOWN")
#: The Celery command line of this installation, for workers and beat.
CELERY = [sys.executable, "-m", "celery", "-A", CELERY_APP]


@dataclass(frozen=True)
class Service:
    """One process of the cluster: how to start it and how to recognise it."""

    name: str
    argv: list[str]
    #: Strings the process's command line contains, telling it from a recycled pid.
    match: tuple[str, ...]
    url: str = ""
    #: A URL that answers once the service is ready (an HTTP service).
    ready_url: str = ""


def free_port() -> int:
    """A port free now, below the kernel's range of ephemeral ports: a home keeps its ports
    from `init` on, and one in that range could be taken meanwhile as the local port of any
    outgoing connection (a worker's to Redis, say), so the service could not start."""
    first_ephemeral = _first_ephemeral_port()
    for port in random.sample(range(LOWEST_CHOSEN_PORT, first_ephemeral), PORT_TRIES):
        with socket.socket() as probe, suppress(OSError):
            probe.bind(("127.0.0.1", port))
            return port
    raise Refused(f"no free port from {LOWEST_CHOSEN_PORT} to {first_ephemeral - 1}")


def _first_ephemeral_port() -> int:
    try:
        low = int(Path(EPHEMERAL_PORTS).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return DEFAULT_FIRST_EPHEMERAL_PORT
    return low if low > LOWEST_CHOSEN_PORT + PORT_TRIES else DEFAULT_FIRST_EPHEMERAL_PORT


def redis_service(settings: Settings) -> Service:
    """The private redis-server: its password and the commands it refuses are in its
    configuration file (``run/redis.conf``, the owner's only), never on its command line,
    which every user of the host can read."""
    port = settings.redis_port or 6379
    redis_dir = settings.home / "redis"
    return Service(
        name="redis",
        argv=[
            shutil.which("redis-server") or "redis-server",
            str(_redis_config(settings)),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(redis_dir),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(settings.log_dir / "redis.log"),
        ],
        # Redis retitles itself "redis-server 127.0.0.1:PORT" once it runs.
        match=("redis-server", str(port)),
        url=settings.broker,
    )


def _redis_config(settings: Settings) -> Path:
    return settings.run_dir / "redis.conf"


def _write_redis_config(settings: Settings) -> None:
    """The private Redis's password, and the commands no client of it needs renamed away:
    another user of the host who finds its port can neither read nor flush its queues, nor
    reconfigure or stop it (the cluster stops it by pid)."""
    lines = [f"requirepass {settings.redis_password}"] if settings.redis_password else []
    lines += [f'rename-command {command} ""' for command in REFUSED_REDIS_COMMANDS]
    path = _redis_config(settings)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text("\n".join(lines) + "\n")


def worker_queues(settings: Settings) -> list[str]:
    """The queues local workers consume: the setting, else every queue the definitions name."""
    if settings.worker_queues:
        return settings.worker_queues
    queues = {DEFAULT_QUEUE}
    try:
        with database.transaction() as session:
            for stored in definitions.list_latest(session):
                queues.update(node["execution"]["queue"] for node in stored.spec["nodes"])
    except PipelineError:
        pass
    return sorted(queues)


def celery_worker_argv(node_name: str, queues: list[str], concurrency: int) -> list[str]:
    """The Celery command line of one worker, for ``cluster start`` and ``pipeline worker``.

    Task events (``-E``) feed Flower. No mingle or gossip: a worker learns nothing from the
    others at start (the database holds the state), and on many hosts their chatter only
    costs broker round trips.
    """
    return [
        *CELERY,
        "worker",
        "-n",
        node_name,
        "-c",
        str(concurrency),
        "-Q",
        ",".join(queues),
        "-E",
        "--without-mingle",
        "--without-gossip",
        "--loglevel",
        "INFO",
    ]


def worker_service(settings: Settings, number: int, queues: list[str]) -> Service:
    log = settings.log_dir / f"worker{number}.log"
    argv = celery_worker_argv(f"worker{number}@%h", queues, settings.worker_concurrency)
    return Service(name=f"worker{number}", argv=[*argv, "--logfile", str(log)], match=(str(log),))


def beat_service(settings: Settings) -> Service:
    log = settings.log_dir / "beat.log"
    return Service(
        name="beat",
        argv=[
            *CELERY,
            "beat",
            "-s",
            str(settings.run_dir / "celerybeat-schedule"),
            "--loglevel",
            "INFO",
            "--logfile",
            str(log),
        ],
        match=(str(log),),
    )


def api_service(settings: Settings) -> Service:
    """The HTTP API; its port, unique to the home, tells it from another home's."""
    port = settings.api_listen_port
    return Service(
        name="api",
        argv=[sys.executable, "-m", "pipeline", "api", "--port", str(port)],
        # /proc/PID/cmdline ends each argument with a NUL, read as a space: the port is whole.
        match=("-m pipeline api ", f"--port {port} "),
        url=settings.api_url,
        ready_url=f"{settings.api_url}{API_PREFIX}{HEALTHZ}",
    )


def operations_service(settings: Settings) -> Service:
    """The worker of an operator's operations run through Flower (restart, halt, submit)."""
    log = settings.log_dir / "operations.log"
    return Service(
        name="operations",
        argv=[
            *CELERY,
            "worker",
            "-n",
            "operations@%h",
            "--pool",
            "solo",
            "-Q",
            OPERATIONS_QUEUE,
            "-E",
            "--without-mingle",
            "--without-gossip",
            "--loglevel",
            "INFO",
            "--logfile",
            str(log),
        ],
        match=(str(log),),
    )


def supervisor_service(settings: Settings) -> Service:
    """The supervisor that starts a dead service again (``pipeline.deploy.supervisor``)."""
    home = str(settings.home)
    return Service(
        name=SUPERVISOR,
        argv=[sys.executable, "-m", "pipeline.deploy.supervisor", home],
        match=("pipeline.deploy.supervisor", f" {home} "),
    )


def flower_service(settings: Settings) -> Service:
    """Flower with the restart page (``pipeline flower``), behind basic auth."""
    log = settings.log_dir / "flower.log"
    return Service(
        name="flower",
        argv=[sys.executable, "-m", "pipeline", "flower", "--log-file", str(log)],
        match=(str(log),),
        url=settings.flower_url,
        ready_url=f"{settings.flower_url}/healthcheck",
    )


#: How each optional service is made, by its name in the ``cluster_services`` setting.
OPTIONAL: dict[str, Callable[[Settings], Service]] = {
    "operations": operations_service,
    "api": api_service,
    "flower": flower_service,
}


def services(
    settings: Settings,
    workers: int | None = None,
    queues: list[str] | None = None,
    every: bool = False,
) -> list[Service]:
    """The cluster's processes: Redis (unless the broker is elsewhere), the supervisor
    (unless the settings turn it off), the workers, beat, and the optional services the
    settings name (``every``: all of them, wherever one
    might have been started); ``queues`` (read from the database) only when starting."""
    count = workers or settings.workers
    listed = [redis_service(settings)] if settings.uses_private_redis else []
    if settings.supervise or every:
        listed.append(supervisor_service(settings))
    listed += [worker_service(settings, n, queues or []) for n in range(1, count + 1)]
    listed.append(beat_service(settings))
    chosen = OPTIONAL if every else settings.cluster_services
    return listed + [make(settings) for name, make in OPTIONAL.items() if name in chosen]


# -- pid files -------------------------------------------------------------------------------


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.pid"


def recorded_services(settings: Settings) -> list[tuple[Service, int]]:
    """Every service whose pid file is there (``start`` wrote it, ``stop`` removes it) with
    the pid it records, the supervisor's own left out: what the supervisor keeps running."""
    found = []
    for path in sorted(settings.run_dir.glob("*.pid")):
        with suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(path.read_text())
            if path.stem != SUPERVISOR and data.get("argv"):
                service = Service(path.stem, list(data["argv"]), tuple(data["match"]))
                found.append((service, int(data["pid"])))
    return found


def recorded_pid(settings: Settings, name: str) -> tuple[int, tuple[str, ...]] | None:
    """The pid and the command-line words of service ``name`` its pid file records."""
    try:
        data = json.loads(_pid_file(settings, name).read_text())
        return int(data["pid"]), tuple(data["match"])
    except (OSError, ValueError, KeyError):
        return None


def alive(pid: int, match: tuple[str, ...]) -> bool:
    """Is ``pid`` a live (not zombie) process whose command line contains each of ``match``?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and all(word in cmdline for word in match)


def _running_pid(settings: Settings, name: str) -> int | None:
    found = recorded_pid(settings, name)
    return found[0] if found and alive(*found) else None


# -- commands --------------------------------------------------------------------------------


def init(sample_data: bool = True) -> dict[str, Any]:
    """Create PIPELINE_HOME, the database, and import every definition in the definitions dir."""
    settings = get_settings()
    make_private(settings)
    for directory in (settings.run_dir, settings.log_dir):
        directory.mkdir(parents=True, exist_ok=True)
    chosen: dict[str, object] = {}
    if settings.uses_private_redis and settings.redis_port is None:
        chosen["redis_port"] = free_port()
    chosen.update(_chosen_credentials(settings))
    write_settings_file(settings.settings_file, chosen)
    settings = _reload()
    database.upgrade()
    files = definitions.definition_files(settings.definitions_dir)
    with database.transaction() as session:
        imported = definitions.import_files(session, files)
    settings.datastore.mkdir(parents=True, exist_ok=True)
    received = 0
    if sample_data and any(stored.name == "sample" for stored, _ in imported):
        received = _receive_sample_data(settings)
    return {
        "home": str(settings.home),
        "database": database.masked(settings.db_url),
        "broker": database.masked(settings.broker),
        "datastore": str(settings.datastore),
        "definitions": [
            {"name": stored.name, "version": stored.version, "new": new} for stored, new in imported
        ],
        "sample_files_received": received,
    }


def _receive_sample_data(settings: Settings) -> int:
    """Receive the sample's input images into the datastore, as any data comes in, unless
    they are there already; how many were received."""
    from pipeline.operations.receipt import receive
    from pipeline.sample.images import RAW_IMAGE, SETS, raw_image_path, write_sample_set

    received = 0
    for number, name in enumerate(SETS, start=1):
        if raw_image_path(settings.datastore, name, 0).exists():
            continue
        with tempfile.TemporaryDirectory(dir=settings.run_dir) as delivery:
            manifest = write_sample_set(Path(delivery), number)
            imported = receive(Path(delivery), RAW_IMAGE, name, manifest, pipeline="sample")
            received += len(imported["files"])
    return received


def _chosen_credentials(settings: Settings) -> dict[str, object]:
    """Ports and secrets for the HTTP API and Flower that neither settings nor env provide."""
    chosen: dict[str, object] = {}
    if settings.api_port is None:
        chosen["api_port"] = free_port()
    if settings.flower_port is None:
        chosen["flower_port"] = free_port()
    if not settings.api_token:
        chosen["api_token"] = secrets.token_urlsafe(32)
    if not settings.flower_password:
        chosen["flower_password"] = secrets.token_urlsafe(16)
    if settings.uses_private_redis and not settings.redis_password:
        chosen["redis_password"] = secrets.token_urlsafe(24)
    return chosen


def make_private(settings: Settings) -> None:
    """Make the home, and all it holds, the owner's (or the ``group``'s) alone.

    This process creates what follows with the cluster's umask. A home that other users
    could read (made by an older version, or by hand) is put right, every file in it; one
    already private is not walked again.
    """
    os.umask(settings.umask)
    home = settings.home
    home.mkdir(parents=True, exist_ok=True)
    directory_mode = 0o2750 if settings.group else 0o700
    if settings.group:
        shutil.chown(home, group=settings.group)
    opened = home.stat().st_mode & 0o7777 != directory_mode
    home.chmod(directory_mode)
    if opened:
        _restrict_tree(settings, directory_mode)


def _restrict_tree(settings: Settings, directory_mode: int) -> None:
    for root, directories, files in os.walk(settings.home):
        for name in directories:
            path = Path(root) / name
            if not path.is_symlink():
                _restrict(path, directory_mode, settings.group)
        for name in files:
            path = Path(root) / name
            if not path.is_symlink():
                _restrict(path, path.stat().st_mode & 0o777 & ~settings.umask, settings.group)


def _restrict(path: Path, mode: int, group: str | None) -> None:
    with suppress(FileNotFoundError):  # a file that went meanwhile
        if group:
            shutil.chown(path, group=group)
        path.chmod(mode)


def credentials() -> dict[str, Any]:
    """The HTTP API's URL and token and Flower's URL and login, as the cluster's home holds them."""
    settings = get_settings()
    _require_init(settings)
    return {
        "broker_url": settings.broker,
        "api_url": settings.api_url,
        "api_token": settings.api_token,
        "flower_url": settings.flower_url,
        "flower_user": settings.flower_user,
        "flower_password": settings.flower_password,
    }


def _reload() -> Settings:
    settings = reload_settings()
    database.reset_engines()
    configure(celery_app(), settings)
    return settings


def _require_init(settings: Settings) -> None:
    if not settings.settings_file.exists():
        raise Refused(database.no_cluster_message())


def start(
    workers: int | None = None, progress: Callable[[str], None] = lambda _: None
) -> list[dict[str, Any]]:
    """Start every service that is not running, and wait until each is ready.

    Redis is ready before the others start; those start side by side, since none needs
    another (their start-up is mostly importing Python). A start that fails stops what it
    started, so a second try begins from nothing.
    """
    settings = get_settings()
    _require_init(settings)
    if settings.uses_private_redis and not shutil.which("redis-server"):
        raise Refused("redis-server not found: install it (apt-get install redis-server)")
    database.check_database()
    if not settings.uses_private_redis:
        publisher().check()  # a broker elsewhere answers before anything that would wait on it
    with _home_lock(settings):
        settings = _upgrade(settings)
        (settings.home / "redis").mkdir(exist_ok=True)
        if settings.uses_private_redis:
            _write_redis_config(settings)
        started: list[Service] = []
        try:
            _start_missing(settings, workers, progress, started)
        except BaseException:
            _stop_services(settings, started)
            raise
    return status(workers)


def _upgrade(settings: Settings) -> Settings:
    """Bring a home made by an older version up to this one's safety: a password on its
    private Redis (a Redis running without one is stopped with the rest of the cluster
    first, its queues kept on disk) and private files. The settings to start with."""
    make_private(settings)
    if not settings.uses_private_redis or settings.redis_password:
        return settings
    if _running_pid(settings, "redis"):
        _stop_services(settings, services(settings, _started_workers(settings), every=True))
    write_settings_file(settings.settings_file, {"redis_password": secrets.token_urlsafe(24)})
    return _reload()


def _start_missing(
    settings: Settings,
    workers: int | None,
    progress: Callable[[str], None],
    started: list[Service],
) -> None:
    """Start the services not running, adding each to ``started`` as it is spawned."""
    waiting = []
    for service in services(settings, workers, worker_queues(settings)):
        if _running_pid(settings, service.name) or adopt(settings, service):
            continue
        if found := recorded_pid(settings, service.name):
            kill_leftovers(settings, found[0])
        progress(f"starting {service.name}")
        process = spawn(settings, service)
        started.append(service)
        if service.name == "redis":
            _wait_ready(settings, service, process)
        else:
            waiting.append((service, process))
    for service, process in waiting:
        progress(f"waiting for {service.name}")
        _wait_ready(settings, service, process)


@contextmanager
def _home_lock(settings: Settings) -> Iterator[None]:
    """Hold the home's lock (a ``flock`` on ``run/cluster.lock``, released if this process
    dies) while starting or stopping its services."""
    with home_lock(settings, LOCK_TIMEOUT) as held:
        assert held
        yield


@contextmanager
def home_lock(settings: Settings, timeout: float) -> Iterator[bool]:
    """Hold the home's lock, waiting at most ``timeout`` seconds (then Refused); with a
    ``timeout`` of 0, yield whether it is held (the supervisor skips a round when a start
    or stop holds it)."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    with (settings.run_dir / "cluster.lock").open("a") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not timeout:
                    yield False
                    return
                if time.monotonic() > deadline:
                    raise Refused(
                        f"another `pipeline cluster start` or `stop` of {settings.home}"
                        f" is still running after {LOCK_TIMEOUT:g} s"
                    ) from None
                time.sleep(POLL)
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def spawn(settings: Settings, service: Service) -> subprocess.Popen[bytes]:
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    output = (settings.log_dir / f"{service.name}.out").open("ab")
    env = {**os.environ, "PIPELINE_HOME": str(settings.home)}
    process = subprocess.Popen(
        service.argv,
        cwd=settings.home,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        umask=settings.umask,
    )
    output.close()
    _record_pid(settings, service, process.pid)
    return process


def _record_pid(settings: Settings, service: Service, pid: int) -> None:
    _pid_file(settings, service.name).write_text(
        json.dumps({"pid": pid, "match": service.match, "argv": service.argv})
    )


def _wait_ready(settings: Settings, service: Service, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise Refused(f"{service.name} exited at start: see {settings.log_dir}")
        if _ready(settings, service):
            return
        time.sleep(POLL)
    raise Refused(f"{service.name} not ready after {READY_TIMEOUT:g} s: see {settings.log_dir}")


def _ready(settings: Settings, service: Service) -> bool:
    if service.ready_url:
        return _http_answers(service.ready_url, settings)
    if service.name == "redis":
        return _redis_answers(settings.broker)
    if service.name == "beat":
        log = settings.log_dir / "beat.log"
        return log.exists() and "beat: Starting" in log.read_text(errors="replace")
    if service.name == SUPERVISOR:
        log, pid = settings.log_dir / "supervisor.log", _running_pid(settings, SUPERVISOR)
        return bool(pid and log.exists() and f"(pid {pid})" in log.read_text(errors="replace"))
    name = f"{service.name}@{socket.gethostname()}"
    try:
        replies = celery_app().control.ping(destination=[name], timeout=0.5)
    except Exception:  # the broker is still starting
        return False
    return any(name in reply for reply in replies)


def _http_answers(url: str, settings: Settings) -> bool:
    context = settings.web_tls() if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(url, timeout=0.5, context=context) as response:
            return bool(response.status == HTTPStatus.OK)
    except OSError:  # refused, or not answering yet (URLError is an OSError)
        return False


def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def stop() -> list[str]:
    """Stop the processes ``start`` started (workers, beat and Flower first, Redis last)."""
    settings = get_settings()
    with _home_lock(settings):
        return _stop_services(settings, services(settings, _started_workers(settings), every=True))


def _stop_services(settings: Settings, listed: list[Service]) -> list[str]:
    """Ask each listed service to stop (SIGTERM: a worker finishes its running subtasks), kill
    it after ``STOP_TIMEOUT``, then kill what is left of its process group (children orphaned
    by a killed parent); Redis last, since the others talk to it while they stop. The names
    of those that had a pid file."""
    stopped = []
    for service in listed:  # one running under a pid file that lost it is stopped too
        if recorded_pid(settings, service.name) and not _running_pid(settings, service.name):
            adopt(settings, service)
    names = [service.name for service in listed]
    ordered = [n for n in names if n != "redis"] + [n for n in names if n == "redis"]
    running = {n: found for n in ordered if (found := recorded_pid(settings, n))}
    for last in (False, True):
        targets = {n: f for n, f in running.items() if (n == "redis") == last}
        for found in targets.values():
            if alive(*found):
                with suppress(ProcessLookupError):
                    os.kill(found[0], signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for name, found in targets.items():
            while alive(*found) and time.monotonic() < deadline:
                time.sleep(POLL)
            for pid in [found[0], *group_members(found[0], settings.home)]:
                if pid == found[0] and not alive(*found):
                    continue
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _pid_file(settings, name).unlink(missing_ok=True)
            stopped.append(name)
    return stopped


def group_members(pgid: int, home: Path) -> list[int]:
    """The live processes of process group ``pgid`` that belong to ``home`` (its
    environment names it, or they run inside it): a recycled group id is never signalled."""
    return [pid for pid, fields in _home_processes(home) if int(fields[2]) == pgid]


def _home_processes(home: Path) -> Iterator[tuple[int, list[str]]]:
    """The live processes that belong to ``home`` (see ``group_members``), each with the
    fields of its ``/proc/PID/stat`` after the command name (state, parent, group, session)."""
    wanted = f"PIPELINE_HOME={home}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with suppress(OSError, IndexError, ValueError):
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] == "Z":
                continue
            environ = (proc / "environ").read_bytes().split(b"\0")
            if wanted in environ or Path(os.readlink(proc / "cwd")).is_relative_to(home):
                yield int(proc.name), fields


def adopt(settings: Settings, service: Service) -> int | None:
    """A process of the home that runs ``service`` though its pid file names another (a
    start or the supervisor killed between starting it and recording it): recorded as the
    service, so it is not started twice (two beats). Only the leader of its own session
    counts: each service leads one, and a worker's pool children share their parent's."""
    for pid, fields in _home_processes(settings.home):
        if int(fields[3]) == pid and alive(pid, service.match):
            _record_pid(settings, service, pid)
            return pid
    return None


def kill_leftovers(settings: Settings, pid: int) -> None:
    """Kill what is left of a dead service's process group (a killed worker's pool): the
    reconciler dispatches again the work it held."""
    for leftover in group_members(pid, settings.home):
        with suppress(ProcessLookupError):
            os.kill(leftover, signal.SIGKILL)


def _started_workers(settings: Settings) -> int:
    return len(list(settings.run_dir.glob("worker*.pid"))) or settings.workers


def _chosen(settings: Settings, name: str) -> bool:
    """Is ``name`` one of the services this home's settings run?"""
    if name == SUPERVISOR:
        return settings.supervise
    return name not in OPTIONAL or name in settings.cluster_services


def status(workers: int | None = None) -> list[dict[str, Any]]:
    """One row per process of the home (name, pid, alive, url); refused for a home with no
    cluster, whose default URLs would belong to nothing."""
    settings = get_settings()
    _require_init(settings)
    count = max(workers or 0, _started_workers(settings))
    rows = []
    for service in services(settings, count, every=True):
        found = recorded_pid(settings, service.name)
        if not found and not _chosen(settings, service.name):
            continue  # neither run by this home nor left running
        rows.append(
            {
                "name": service.name,
                "pid": found[0] if found else None,
                "alive": bool(found and alive(*found)),
                "url": database.masked(service.url) if service.url else None,
            }
        )
    return rows
