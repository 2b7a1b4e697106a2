"""The processes a benchmark run drives: one redis-server shared by both sides, a raw Celery
worker, a pipeline cluster started by the product's own ``pipeline cluster`` commands, and a
throwaway PostgreSQL server.

Both sides get the same number of worker processes (one Celery worker with a prefork pool
of ``WORKER_PROCESSES``) on the same Redis server (the pipeline on database 1, raw Celery on
database 0), and only one side runs at a time.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFINITIONS = Path(__file__).resolve().parent / "pipelines"
PIPELINE = str(Path(sys.executable).parent / "pipeline")
#: Pool processes of the one Celery worker on each side.
WORKER_PROCESSES = 2
#: Seconds a started process gets to answer.
READY_TIMEOUT = 60.0
POLL = 0.05


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float, what: str, poll: float = POLL) -> Any:
    """Poll ``condition`` until it returns something truthy; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def redis_server(base: Path) -> Iterator[int]:
    """A private redis-server without persistence; yields its port."""
    port = free_port()
    process = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind"]
        + ["127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(base)],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        import redis

        client = redis.Redis(port=port)
        wait_for(lambda: _pings(client), READY_TIMEOUT, "redis-server")
        yield port
    finally:
        _stop(process)


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - not up yet
        return False


@contextmanager
def raw_worker(broker: str, log: Path) -> Iterator[None]:
    """A plain Celery worker of ``bench.raw`` with ``WORKER_PROCESSES`` pool processes."""
    from bench import raw

    env = {**os.environ, raw.BROKER_ENV: broker, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "celery", "-A", "bench.raw", "worker", "-c"]
    argv += [str(WORKER_PROCESSES), "-Q", raw.QUEUE, "--without-mingle", "--without-gossip"]
    argv += ["--loglevel", "WARNING", "--logfile", str(log)]
    output = log.with_suffix(".out").open("ab")
    process = subprocess.Popen(
        argv, env=env, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
    )
    output.close()
    try:
        raw.app.conf.update(broker_url=broker, result_backend=broker)
        wait_for(lambda: raw.app.control.ping(timeout=0.5), READY_TIMEOUT, "raw Celery worker")
        yield
    finally:
        _stop(process)


#: Threads of each Dramatiq worker process: Dramatiq's default, and its best here. A no-op
#: actor mostly waits on Redis (fetch, store its result, ack), which threads overlap: one
#: thread a process, as in Celery's prefork pool, measured a fifth of the rate, and 16 or
#: 32 less than 8 (docs/benchmarks.md). The peer is measured at its best.
DRAMATIQ_THREADS = 8


@contextmanager
def dramatiq_worker(broker: str, log: Path) -> Iterator[Any]:
    """A ``dramatiq`` command of ``WORKER_PROCESSES`` processes of ``DRAMATIQ_THREADS``
    threads on ``broker``; yields the no-op actor (declared in this process too) once the
    worker has answered a first message."""
    from bench import peers

    actor = peers.setup(broker)
    env = {**os.environ, peers.BROKER_ENV: broker, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "dramatiq", "bench.peers:setup", "--queues", peers.QUEUE]
    argv += ["--processes", str(WORKER_PROCESSES), "--threads", str(DRAMATIQ_THREADS)]
    argv += ["--log-file", str(log)]
    output = log.with_suffix(".out").open("ab")
    process = subprocess.Popen(
        argv, env=env, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
    )
    output.close()
    try:
        message = actor.send()
        message.get_result(block=True, timeout=int(READY_TIMEOUT * 1000))
        yield actor
    finally:
        _stop(process)


@dataclass
class Cluster:
    """A pipeline cluster under its own home, run by ``pipeline cluster`` commands."""

    home: Path
    env: dict[str, str]

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [PIPELINE, *args], env=self.env, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"pipeline {' '.join(args)}: {result.stdout}{result.stderr}")
        return result.stdout

    @property
    def datastore(self) -> Path:
        return self.home / "datastore"

    def worker_pid(self) -> int:
        return self.worker_pids()[0]

    def worker_pids(self) -> list[int]:
        """The main process of each Celery worker (worker1, worker2, ...), in that order."""
        import json

        rows = json.loads(self.cli("cluster", "status", "--json"))
        workers = sorted(
            (int(row["name"].removeprefix("worker")), int(row["pid"]))
            for row in rows
            if row["name"].removeprefix("worker").isdigit()
        )
        return [pid for _, pid in workers]

    def activate(self) -> None:
        """Point this process's settings, database and Celery app at the cluster."""
        from pipeline.database import reset_engines
        from pipeline.messaging.celery_app import celery_app, configure
        from pipeline.settings import reload_settings

        for key in [key for key in os.environ if key.startswith("PIPELINE_")]:
            del os.environ[key]
        for key, value in self.env.items():
            if key.startswith("PIPELINE_"):
                os.environ[key] = value
        reset_engines()
        configure(celery_app(), reload_settings())


@contextmanager
def api_server(cluster: Cluster) -> Iterator[str]:
    """The cluster's HTTP API (``pipeline api``) alone, for a cluster that was only initialised;
    yields its URL."""
    from pipeline.interfaces.client import healthy
    from pipeline.settings import get_settings

    url = get_settings().api_url
    log = (cluster.home / "api.log").open("ab")
    process = subprocess.Popen(
        [PIPELINE, "api"],
        env=cluster.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    try:
        wait_for(lambda: healthy(url), READY_TIMEOUT, "the HTTP API")
        yield url
    finally:
        _stop(process)


@contextmanager
def console_server() -> Iterator[tuple[str, tuple[str, str]]]:
    """Flower with the pipeline console, in a thread of this process, for a cluster that
    was only initialised; yields its URL and login."""
    from pipeline.interfaces import flower
    from pipeline.settings import get_settings

    settings = get_settings()
    with flower.in_thread(settings) as url:
        yield url, (settings.flower_user, settings.flower_password or "")


def cluster_env(
    home: Path, broker: str, database_url: str | None = None, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of a cluster under ``home``: this process's, without its own
    PIPELINE_* settings, and the benchmark's definitions importable by the workers. Its
    cluster runs no HTTP API and no Flower, as the raw Celery it is held against runs none:
    Flower alone takes a share of the two cores, reading every task event."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env.update(
        PYTHONPATH=str(REPO),
        PIPELINE_HOME=str(home),
        PIPELINE_DEFINITIONS_DIR=str(DEFINITIONS),
        PIPELINE_WORKER_CONCURRENCY=str(WORKER_PROCESSES),
        PIPELINE_CLUSTER_SERVICES="",
    )
    if broker:
        env["PIPELINE_BROKER_URL"] = broker
    if database_url:
        env["PIPELINE_DATABASE_URL"] = database_url
    return {**env, **(extra or {})}


@contextmanager
def pipeline_cluster(
    base: Path,
    broker: str,
    database_url: str | None = None,
    workers: int = 1,
    extra: dict[str, str] | None = None,
) -> Iterator[Cluster]:
    """An initialised and started cluster with ``workers`` Celery workers of
    ``WORKER_PROCESSES`` processes each, ``extra`` in its environment."""
    home = base / "home"
    cluster = Cluster(home, cluster_env(home, broker, database_url, extra))
    cluster.cli("cluster", "init", "--no-sample-data")
    try:
        cluster.cli("cluster", "start", "--workers", str(workers))
        cluster.activate()
        yield cluster
    finally:
        subprocess.run([PIPELINE, "cluster", "stop"], env=cluster.env, capture_output=True)


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres_server(base: Path) -> Iterator[str]:
    """A throwaway PostgreSQL server (fsync off); yields its SQLAlchemy URL."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is missing: apt-get install postgresql")
    bindir, data, port = found[-1].parent, base / "pg", free_port()
    base.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    quiet = {"check": True, "capture_output": True}
    initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
    subprocess.run(_as_postgres([*initdb, "-E", "UTF8", "--no-sync"]), **quiet)
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={base}"
    options += " -c fsync=off -c max_connections=100"
    pg_ctl = str(bindir / "pg_ctl")
    log = str(base / "pg.log")
    subprocess.run(
        _as_postgres([pg_ctl, "-D", str(data), "-w", "-l", log, "-o", options, "start"]), **quiet
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "stop"]), capture_output=True
        )
