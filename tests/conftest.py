"""Fixtures: real processes (PostgreSQL, clusters run by ``pipeline cluster``) for the
end-to-end tests, and an initialised home with an in-process worker for the fast ones.
The helpers behind them are in ``tests/support.py``."""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import (
    Cluster,
    InProcessWorker,
    PostgresServer,
    chaos_cluster,
    make_cluster,
    point_here,
    postgres_server,
    started_cluster,
)

#: The reconciler interval of the shared clusters, whose tests lose nothing for it to find:
#: seconds, not one second, so it takes little of the machine the tests share.
IDLE_MONITOR = "10"


#: The test groups that take longest, longest first (``make test`` keeps this order with
#: ``--no-loadscope-reorder``): none of them starts last, to run on alone at the end while
#: the other test processes sit idle.
LONGEST_FIRST = (
    "chaos-workers",
    "shared-cluster",
    "multihost",
    "chaos-services",
    "bench",
    "cluster",
    "full-cluster",
    "concurrency",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest groups first, then the other end-to-end tests, then the in-process ones;
    each group in its own order (the sort is stable)."""

    def rank(item: pytest.Item) -> int:
        group = item.get_closest_marker("xdist_group")
        if group and group.args[0] in LONGEST_FIRST:
            return LONGEST_FIRST.index(group.args[0])
        return len(LONGEST_FIRST) + (0 if item.get_closest_marker("e2e") else 1)

    items.sort(key=rank)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Refuse to run a parallel test process whose ``xdist_group`` marks were dropped: each
    test of a group would then set up its group's cluster again, and the suite would take
    twice as long (pytest-xdist 3.8 under pytest 9.2, xdist issue 1386)."""
    if not os.environ.get("PYTEST_XDIST_WORKER") or not session.config.getvalue("loadgroup"):
        return
    for item in session.items:
        if item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
            raise pytest.UsageError(f"{item.nodeid}: its xdist_group was dropped")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture
def backend() -> str:
    """The database of ``cluster``: SQLite, unless a test says
    ``@pytest.mark.parametrize("backend", ["postgres"])`` (behaviour that depends on it)."""
    return "sqlite"


@pytest.fixture
def cluster(backend: str, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A started cluster on ``backend``, stopped and removed afterwards."""
    server = request.getfixturevalue("postgres") if backend == "postgres" else None
    with started_cluster(backend, server) as made:
        yield made


@pytest.fixture(scope="session")
def algorithms_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory on the shared cluster's path, for algorithms a test writes or changes."""
    return tmp_path_factory.mktemp("algorithms")


@pytest.fixture(scope="session")
def shared_cluster(algorithms_path: Path) -> Iterator[Cluster]:
    """One started SQLite cluster for the modules in xdist group ``shared-cluster``, which
    run one after another on one test process: redis-server, a worker and beat, no HTTP
    API or Flower. Its reconciler leaves quiet tasks alone for ten minutes, so what a test
    loses stays lost until it resumes monitoring; ``algorithms_path`` is on its path."""
    with started_cluster(
        PIPELINE_STALE_AFTER="600",
        PIPELINE_RECONCILE_INTERVAL=IDLE_MONITOR,
        PIPELINE_CLUSTER_SERVICES="",
        PYTHONPATH=str(algorithms_path),
    ) as made:
        yield made


@pytest.fixture(scope="session")
def full_cluster() -> Iterator[Cluster]:
    """One started SQLite cluster with every service (the HTTP API, Flower and the
    operations worker too), for the modules in xdist group ``full-cluster``, which run one
    after another on one test process."""
    with started_cluster() as made:
        yield made


@pytest.fixture(scope="module")
def chaos_home(postgres: PostgresServer, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The chaos cluster of a module (its ``CHAOS_WORKERS`` workers, on PostgreSQL)."""
    with chaos_cluster(postgres, workers=request.module.CHAOS_WORKERS) as made:
        yield made


@pytest.fixture
def chaos(
    chaos_home: Cluster, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Cluster:
    """The module's chaos cluster with every process running (a test before may have
    killed one), this test process reading its database directly. The module's tests
    share it, in order, on one test process (give the module an xdist group)."""
    chaos_home.start(workers=request.module.CHAOS_WORKERS)
    chaos_home.activate(monkeypatch)
    return chaos_home


@pytest.fixture
def new_cluster() -> Iterator[Callable[..., Cluster]]:
    """A factory of initialised (not started) SQLite clusters, all stopped afterwards."""
    made: list[Cluster] = []

    def factory(**settings: str) -> Cluster:
        made.append(make_cluster("sqlite", None, **settings))
        return made[-1]

    yield factory
    for cluster in made:
        cluster.stop()
        shutil.rmtree(cluster.home, ignore_errors=True)


def _point_at(home: Path, monkeypatch: pytest.MonkeyPatch, **settings: str) -> None:
    for key in [k for k in os.environ if k.startswith("PIPELINE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIPELINE_HOME", str(home))
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    point_here()


def _template(
    tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]
) -> Path:
    """A home made once for the whole run, parallel test processes included (the first
    makes it, under a lock, the others wait for it); each test gets a copy."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the run's test processes
    template = root / name
    with (root / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (template / MADE).exists():
            shutil.rmtree(template, ignore_errors=True)
            make(template)
            _close_database(template)
            (template / MADE).touch()
    return template


def _close_database(home: Path) -> None:
    """Close this process's connections to the home's SQLite database, which folds its
    write-ahead log into the file: copies of the home then need only the file."""
    from pipeline.database import engine_for

    engine_for(f"sqlite:///{home / 'pipeline.db'}").dispose()


#: The mark of a template made whole.
MADE = ".made"


def _copy_home(template: Path, copy: Path) -> None:
    """Copy a home, task directories included, its database naming them where they now are."""
    shutil.copytree(template, copy, ignore=shutil.ignore_patterns(MADE, "*-wal", "*-shm"))
    database = copy / "pipeline.db"
    if database.exists():
        with sqlite3.connect(database) as connection:
            connection.execute(
                "UPDATE tasks SET task_dir = replace(task_dir, ?, ?)", (str(template), str(copy))
            )


def _own_copy(template: Path, copy: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of a home, pointed at."""
    _copy_home(template, copy)
    _point_at(copy, monkeypatch)
    return copy


def _made_by_running(base: Path, run: Callable[[InProcessWorker], None]) -> Callable[[Path], None]:
    """Make a template from a copy of ``base`` in which ``run`` ran with a worker."""

    def make(template: Path) -> None:
        _copy_home(base, template)
        with pytest.MonkeyPatch.context() as monkeypatch:
            _point_at(template, monkeypatch)
            with InProcessWorker() as worker:
                run(worker)

    return make


@pytest.fixture(scope="session")
def migrated_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with nothing but a migrated, empty SQLite database."""
    from pipeline.database import upgrade

    def make(template: Path) -> None:
        with pytest.MonkeyPatch.context() as monkeypatch:
            _point_at(template, monkeypatch)
            upgrade()

    return _template(tmp_path_factory, "migrated-home", make)


@pytest.fixture
def database(migrated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A migrated, empty SQLite database under a PIPELINE_HOME of this test's own."""
    return _own_copy(migrated_home, tmp_path / "database", monkeypatch)


@pytest.fixture(scope="session")
def initialised_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home as ``pipeline cluster init`` leaves it (database, sample definition and
    images)."""
    from pipeline.deploy import cluster

    def make(template: Path) -> None:
        with pytest.MonkeyPatch.context() as monkeypatch:
            _point_at(template, monkeypatch)
            cluster.init()

    return _template(tmp_path_factory, "initialised-home", make)


@pytest.fixture
def home(initialised_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An initialised home of this test's own (SQLite, the sample pipeline and its images),
    that this process points at; no process is started."""
    return _own_copy(initialised_home, tmp_path / "home", monkeypatch)


def _complete(worker: InProcessWorker) -> None:
    from pipeline.operations import facade, queries

    assert facade.submit("sample")["id"] == 1
    worker.drain()
    assert queries.get_instance(1)["state"] == "COMPLETED"


def _fail(worker: InProcessWorker) -> None:
    from pipeline.operations import facade, queries

    facade.set_parameters("algorithm", ["throw_exception_subtask_0=true"])
    assert facade.submit("sample")["id"] == 1
    worker.drain()
    assert queries.get_instance(1)["state"] == "ERRORS_STALLED"


@pytest.fixture(scope="session")
def completed_home(initialised_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _template(
        tmp_path_factory, "completed-home", _made_by_running(initialised_home, _complete)
    )


@pytest.fixture(scope="session")
def failed_home(initialised_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _template(tmp_path_factory, "failed-home", _made_by_running(initialised_home, _fail))


@pytest.fixture
def completed(completed_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home of this test's own whose instance 1, the whole sample, is COMPLETED."""
    return _own_copy(completed_home, tmp_path / "completed", monkeypatch)


@pytest.fixture(scope="module")
def untouched_home(completed_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy of the completed home for a module's tests that must change nothing."""
    copy = tmp_path_factory.mktemp("untouched") / "home"
    _copy_home(completed_home, copy)
    return copy


@pytest.fixture
def untouched(untouched_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A completed home shared by a module's refused requests, each of which asserts that it
    changed nothing: a copy per test costs more than all their requests."""
    _point_at(untouched_home, monkeypatch)
    return untouched_home


@pytest.fixture
def failed(failed_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home of this test's own whose instance 1 of the sample, its subtask 0 failing on
    purpose (``throw_exception_subtask_0``), stopped ERRORS_STALLED: tasks 1 and 2, the
    permuter's, are ``ERROR - ALGORITHM_COMPLETE``, ``3/4 (1)``."""
    return _own_copy(failed_home, tmp_path / "failed", monkeypatch)


@pytest.fixture
def worker() -> Iterator[InProcessWorker]:
    """The broker and a worker inside this test's process, over the home it points at."""
    with InProcessWorker() as worker:
        yield worker


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_database(
    request: pytest.FixtureRequest, home: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """This test's home on SQLite, then again on a PostgreSQL database of its own: for what
    depends on the database (row locks under racing transactions)."""
    if request.param == "postgres":
        from pipeline.deploy import cluster

        server = request.getfixturevalue("postgres")
        _point_at(home, monkeypatch, PIPELINE_DATABASE_URL=server.create_database())
        cluster.init(sample_data=False)
    return str(request.param)
