"""Fixtures that start real processes: PostgreSQL, and clusters (redis-server, Celery
workers and beat) run by the product's own ``pipeline cluster`` commands."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

PIPELINE = str(Path(sys.executable).parent / "pipeline")
REPO = Path(__file__).resolve().parent.parent
#: Settings that make a test cluster react quickly.
FAST_SETTINGS = {"PIPELINE_MONITOR_INTERVAL": "1", "PIPELINE_STALE_AFTER": "5"}


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


# -- PostgreSQL ------------------------------------------------------------------------------


@dataclass
class PostgresServer:
    port: int
    base: Path
    pg_ctl: str

    def restart(self) -> None:
        """Stop the server (closing every connection) and start it again on the same port."""
        subprocess.run(
            _as_postgres(
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


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is missing: `make test` installs it (apt-get install postgresql)")
    return found[-1].parent


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = _postgres_bin()
    base = Path(tempfile.mkdtemp(prefix="pipeline-pg-", dir="/tmp"))
    base.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    data, port = base / "data", free_port()
    subprocess.run(
        _as_postgres(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        ),
        check=True,
        capture_output=True,
    )
    options = (
        f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={base}"
        " -c fsync=off -c max_connections=200"
    )
    pg_ctl = str(bindir / "pg_ctl")
    subprocess.run(
        _as_postgres(
            [pg_ctl, "-D", str(data), "-w", "-l", str(base / "server.log"), "-o", options, "start"]
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield PostgresServer(port, base, pg_ctl)
    finally:
        subprocess.run(
            _as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "stop"]), capture_output=True
        )
        shutil.rmtree(base, ignore_errors=True)


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
        pid = self.pid(name)
        with suppress(ProcessLookupError):  # killed already, awaited here
            os.killpg(pid, signal.SIGKILL)
        from pipeline.cluster import alive

        wait_for(lambda: not alive(pid, ()), what=f"{name} to die")

    def submit(self, *args: Any) -> int:
        return int(self.json("submit", "sample", *args)["id"])

    def wait(self, instance: int, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.cli("wait", instance, "--timeout", timeout, check=False, timeout=timeout + 30)

    def tasks(self, instance: int) -> list[dict[str, Any]]:
        return self.json("tasks", instance)

    def activate(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point this test process's settings, database and Celery app at the cluster."""
        from config.settings import reload_settings
        from pipeline.database import reset_engines
        from workers.app import app, configure

        for key, value in self.env.items():
            if key.startswith("PIPELINE_"):
                monkeypatch.setenv(key, value)
        reset_engines()
        configure(app, reload_settings())


def make_cluster(backend: str, postgres: PostgresServer | None, **settings: str) -> Cluster:
    home = Path(tempfile.mkdtemp(prefix="pipeline-home-"))
    env = clean_env(PIPELINE_HOME=str(home), **{**FAST_SETTINGS, **settings})
    if backend == "postgres":
        assert postgres is not None
        env["PIPELINE_DATABASE_URL"] = postgres.create_database()
    cluster = Cluster(home=home, env=env, backend=backend)
    cluster.cli("cluster", "init")
    return cluster


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextmanager
def started_cluster(
    backend: str, request: pytest.FixtureRequest, **settings: str
) -> Iterator[Cluster]:
    """An initialised and started cluster on SQLite or PostgreSQL, stopped afterwards."""
    postgres = request.getfixturevalue("postgres_server") if backend == "postgres" else None
    made = make_cluster(backend, postgres, **settings)
    try:
        made.start()
        yield made
    finally:
        made.stop()
        shutil.rmtree(made.home, ignore_errors=True)


@pytest.fixture
def cluster(backend: str, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    with started_cluster(backend, request) as made:
        yield made


@pytest.fixture
def new_cluster(request: pytest.FixtureRequest) -> Iterator[Callable[..., Cluster]]:
    """A factory of initialised (not started) SQLite clusters, all stopped afterwards."""
    made: list[Cluster] = []

    def factory(**settings: str) -> Cluster:
        made.append(make_cluster("sqlite", None, **settings))
        return made[-1]

    yield factory
    for cluster in made:
        cluster.stop()
        shutil.rmtree(cluster.home, ignore_errors=True)


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A migrated SQLite database under a fresh PIPELINE_HOME, for tests without a cluster."""
    from config.settings import reload_settings
    from pipeline.database import reset_engines, upgrade

    for key in [k for k in os.environ if k.startswith("PIPELINE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path))
    reset_engines()
    reload_settings()
    upgrade()
    yield tmp_path
    reset_engines()
    reload_settings()
