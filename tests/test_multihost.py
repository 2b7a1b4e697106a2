"""Several hosts on a real network: a central host and two worker hosts in network namespaces.

The central host (its own network namespace) runs Redis and PostgreSQL (each listening only
on its address on the bridge, over TLS only, with a password: certificates from a throwaway
CA the test makes with ``openssl``), `pipeline cluster start` (beat, the HTTP API, a worker for
queue default) and the operator's CLI. Each worker host (a namespace of
its own, joined to the central one by a veth link) runs ``pipeline worker`` with settings
from the environment alone, consuming its own queue. The sample pipeline's nodes are
routed: permuter and averaging to queue ``hostA``, flip to queue ``hostB``. The datastore
and task root are one directory at the same path everywhere (the namespaces share the file
system, as hosts share an NFS mount).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.sample.algorithms import CHANNEL_ORDER
from pipeline.sample.images import pixels
from pipeline.settings import PACKAGED_DEFINITIONS
from tests.support import (
    PIPELINE,
    Certificates,
    Host,
    clean_env,
    ip,
    link_hosts,
    make_certificates,
    namespaces_unavailable,
    unavailable,
    wait_for,
)

# One test process takes them all: they share one module-scoped network, in order.
pytestmark = [pytest.mark.multihost, pytest.mark.e2e, pytest.mark.xdist_group("multihost")]

#: The bridge's network; the central host is .1, the worker hosts .2 and .3.
NETWORK = "10.77.0"
CENTRAL_ADDRESS = f"{NETWORK}.1"
REDIS_PORT, POSTGRES_PORT = 6379, 5432
#: Where each node of the sample runs: the queue its execution settings name.
QUEUES = {"permuter": "hostA", "flip": "hostB", "averaging": "hostA"}
#: Settings that make lost work come back within seconds (see docs/operator-guide.md, "When
#: processes die").
FAST = {
    "PIPELINE_LEASE_SECONDS": "3",
    "PIPELINE_RECONCILE_INTERVAL": "1",
    "PIPELINE_STALE_AFTER": "5",
}
#: Seconds a service gets to come up.
READY_SECONDS = 60
#: The passwords of the central host's Redis and PostgreSQL.
REDIS_PASSWORD, POSTGRES_PASSWORD = "redis-secret-for-the-test", "postgres-secret-for-the-test"


#: Prints the subtasks of an instance running on a worker host as soon as there is one;
#: exits 1 if there is none before the deadline.
WATCH_RUNNING = """
import json, sys, time
from pipeline.operations import queries
instance, host, deadline = int(sys.argv[1]), sys.argv[2], time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    running = [
        {**s, "task": t["id"]}
        for t in queries.list_tasks(instance)
        for s in queries.list_subtasks(t["id"])
        if s["state"] == "RUNNING" and s["worker_host"] == host
    ]
    if running:
        print(json.dumps(running, default=str))
        sys.exit(0)
    time.sleep(0.05)
sys.exit(1)
"""


#: Prints an instance's tasks, each with its subtasks and its history, as JSON: what the
#: tests read, in one process on the central host rather than a CLI call per task.
READ_INSTANCE = """
import json, sys
from pipeline.operations import queries
tasks = queries.list_tasks(int(sys.argv[1]))
for task in tasks:
    task["subtasks"] = queries.list_subtasks(task["id"])
    task["history"] = queries.get_task(task["id"])["history"]
print(json.dumps(tasks, default=str))
"""


def postgres_bindir() -> Path:
    """Debian's PostgreSQL programs (the newest version installed), or a path that is absent."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else Path("/usr/lib/postgresql/missing")


def ready_or_exited(log: Path, process: subprocess.Popen[bytes]) -> Callable[[], bool]:
    """Has the worker logging to ``log`` said it is ready, or exited (a one-line error)?"""
    return lambda: "ready." in log.read_text(errors="replace") or process.poll() is not None


@dataclass
class Network:
    central: Host
    hosts: dict[str, Host]
    shared: Path
    env: dict[str, str]

    def worker_env(self, host: str) -> dict[str, str]:
        """A worker host's settings: environment only, in a home with no settings file."""
        home = self.shared / "homes" / host
        home.mkdir(parents=True, exist_ok=True)
        return {**self.env, "PIPELINE_HOME": str(home)}

    def start_workers(self, *workers: tuple[str, str, str, int]) -> None:
        """Start ``pipeline worker`` for each (host, queue, hostname, concurrency), side by
        side, and return once every one is ready."""
        started = []
        for host, queue, hostname, concurrency in workers:
            argv = [PIPELINE, "worker", "--queues", queue, "--concurrency", str(concurrency)]
            log = self.hosts[host].start(
                f"worker-{queue}", [*argv, "--hostname", hostname], self.worker_env(host)
            )
            started.append((hostname, log, self.hosts[host].processes[-1]))
        for hostname, log, process in started:
            wait_for(ready_or_exited(log, process), READY_SECONDS, f"{hostname} to be ready")
            assert process.poll() is None, log.read_text(errors="replace")

    def cli(self, *args: Any, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
        """The operator's CLI, run on the central host (with settings ``env`` added)."""
        result = subprocess.run(
            self.central.command([PIPELINE, *map(str, args)]),
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=180,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"pipeline {args} exited {result.returncode}: {result.stderr}")
        return result

    def json(self, *args: Any) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def read(self, instance: int) -> list[dict[str, Any]]:
        """The instance's tasks, each with its ``subtasks`` and ``history`` (READ_INSTANCE)."""
        reader = [sys.executable, "-c", READ_INSTANCE, str(instance)]
        found = subprocess.run(
            self.central.command(reader), env=self.env, capture_output=True, text=True
        )
        assert found.returncode == 0, found.stderr
        return json.loads(found.stdout)

    def running_on(self, instance: int, worker_host: str, timeout: float = 30) -> list[dict]:
        """The subtasks of ``instance`` running on ``worker_host``, as soon as there is one:
        watched from the central host by one process reading the database, since a CLI call
        per look would be slower than the subtasks."""
        watcher = [sys.executable, "-c", WATCH_RUNNING, str(instance), worker_host, str(timeout)]
        found = subprocess.run(
            self.central.command(watcher), env=self.env, capture_output=True, text=True
        )
        assert found.returncode == 0, f"nothing ran on {worker_host}: {found.stderr}"
        return json.loads(found.stdout)

    def report(self, instance: int) -> str:
        """What an operator would look at when a run does not finish."""
        tasks = self.cli("tasks", instance).stdout
        details = [self.cli("task", task["id"]).stdout for task in self.json("tasks", instance)]
        beat = (self.shared / "logs" / "central-beat.log").read_text(errors="replace")
        return "\n".join([tasks, *details, self.cli("alerts").stdout, beat[-3000:]])

    def wait(self, instance: int, timeout: float = 60) -> int:
        return self.cli("wait", instance, "--timeout", timeout, check=False).returncode

    @property
    def datastore(self) -> Path:
        return self.shared / "datastore"


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    """Central host with Redis, PostgreSQL, beat and a worker for the reconciler task (queue
    default); hostA and hostB with one worker each, for their own queues."""
    reason = namespaces_unavailable()
    if reason:
        unavailable(f"multi-host test: {reason}")
    if not postgres_bindir().is_dir() or not shutil.which("redis-server"):
        unavailable("multi-host test: needs redis-server and PostgreSQL (make test installs them)")
    shared = Path(tempfile.mkdtemp(prefix="pipeline-multihost-", dir="/tmp"))
    shared.chmod(0o755)
    logs = shared / "logs"
    logs.mkdir()
    prefix = f"pl{os.getpid()}"
    hosts = {
        name: Host(name, f"{prefix}-{name}", f"{NETWORK}.{number}", logs)
        for number, name in enumerate(["central", "hostA", "hostB"], start=1)
    }
    try:
        link_hosts(list(hosts.values()))
        central = hosts["central"]
        tls = make_certificates(shared / "tls", CENTRAL_ADDRESS)
        start_postgres(central, postgres_bindir(), shared, tls)
        env = shared_env(shared, tls)
        redis_log = central.start("redis", redis_argv(shared, tls), env)
        wait_for(lambda: "Ready to accept" in redis_log.read_text(), READY_SECONDS, "redis")
        network = Network(central, hosts, shared, env)
        network.cli("cluster", "init")
        # As docs/deployment.md says: beat, the HTTP API, and a worker for queue default (where
        # beat's reconciler task goes), on the central host.
        network.cli("cluster", "start", "--workers", 1, PIPELINE_WORKER_QUEUES="default")
        network.start_workers(("hostA", "hostA", "hostA", 2), ("hostB", "hostB", "hostB", 2))
        yield network
    finally:
        tear_down(hosts, shared)


def start_postgres(central: Host, bindir: Path, shared: Path, tls: Certificates) -> None:
    """PostgreSQL as the postgres user, listening on the central host's address only, over
    TLS only, with a password."""
    base = shared / "postgres"
    base.mkdir()
    shutil.chown(base, "postgres", "postgres")
    password = base / "password"
    password.write_text(POSTGRES_PASSWORD)
    key = base / "server.key"  # the server's key: the postgres user's own, 0600
    shutil.copy(tls.key, key)
    key.chmod(0o600)
    for path in (password, key):
        shutil.chown(path, "postgres", "postgres")
    initdb = [str(bindir / "initdb"), "-D", str(base / "data"), "-U", "postgres", "-A", "trust"]
    subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            *initdb,
            "-E",
            "UTF8",
            "--no-sync",
            f"--pwfile={password}",
        ],
        check=True,
        capture_output=True,
    )
    with (base / "data" / "pg_hba.conf").open("a") as rules:  # the hosts on the bridge
        rules.write(f"hostssl all all {NETWORK}.0/24 scram-sha-256\n")
    options = (
        f"-p {POSTGRES_PORT} -c listen_addresses={CENTRAL_ADDRESS}"
        f" -c unix_socket_directories={base} -c fsync=off -c max_connections=100"
        f" -c ssl=on -c ssl_cert_file={tls.certificate} -c ssl_key_file={key}"
    )
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(base / "data"), "-l", str(base / "server.log")]
    subprocess.run(
        central.command(["runuser", "-u", "postgres", "--", *pg_ctl, "-w", "-o", options, "start"]),
        check=True,
        capture_output=True,
    )


def redis_argv(shared: Path, tls: Certificates) -> list[str]:
    """Redis on the central host's address, over TLS only (no plain port), with a password."""
    return [
        "redis-server",
        "--port",
        "0",
        "--tls-port",
        str(REDIS_PORT),
        "--tls-cert-file",
        str(tls.certificate),
        "--tls-key-file",
        str(tls.key),
        "--tls-ca-cert-file",
        str(tls.ca),
        "--tls-auth-clients",
        "no",
        "--requirepass",
        REDIS_PASSWORD,
        "--bind",
        CENTRAL_ADDRESS,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(shared),
    ]


def shared_env(shared: Path, tls: Certificates) -> dict[str, str]:
    """The settings every host shares, and the central host's home (where `init` writes)."""
    definitions = shared / "definitions"
    definitions.mkdir()
    sample = yaml.safe_load((PACKAGED_DEFINITIONS / "sample.yaml").read_text())
    for node in sample["nodes"]:
        node["execution"] = {"queue": QUEUES[node["name"]]}
    (definitions / "sample.yaml").write_text(yaml.safe_dump(sample, sort_keys=False))
    central = f"{CENTRAL_ADDRESS}:{POSTGRES_PORT}"
    return clean_env(
        PIPELINE_HOME=str(shared / "homes" / "central"),
        PIPELINE_BROKER_URL=f"rediss://:{REDIS_PASSWORD}@{CENTRAL_ADDRESS}:{REDIS_PORT}/0",
        PIPELINE_BROKER_CA_FILE=str(tls.ca),
        PIPELINE_DATABASE_URL=f"postgresql+psycopg://postgres:{POSTGRES_PASSWORD}@{central}/postgres",
        PIPELINE_DATABASE_CA_FILE=str(tls.ca),
        PIPELINE_DATASTORE_ROOT=str(shared / "datastore"),
        PIPELINE_TASK_ROOT=str(shared / "tasks"),
        PIPELINE_DEFINITIONS_DIR=str(definitions),
        **FAST,
    )


def tear_down(hosts: dict[str, Host], shared: Path) -> None:
    """Every process killed, every namespace (and the veth links in it) removed."""
    data = shared / "postgres" / "data"
    if (data / "postmaster.pid").exists():  # stopped cleanly: no shared memory left behind
        pg_ctl = [str(postgres_bindir() / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]
        subprocess.run(["runuser", "-u", "postgres", "--", *pg_ctl], capture_output=True)
    for host in hosts.values():
        if host.netns in ip("netns", "list").stdout.split():
            host.kill_everything()
            ip("netns", "del", host.netns, check=False)
    shutil.rmtree(shared, ignore_errors=True)


# -- the tests -------------------------------------------------------------------------------


def subtask_hosts(tasks: list[dict[str, Any]]) -> dict[str, set[str]]:
    """The worker hosts each node's subtasks ran on (tasks as ``Network.read`` gives them)."""
    hosts: dict[str, set[str]] = {}
    for task in tasks:
        hosts.setdefault(task["node"], set()).update(s["worker_host"] for s in task["subtasks"])
    return hosts


def assert_permuted_right(datastore: Path) -> None:
    for set_number, unit in ((1, "set-1"), (2, "set-2")):
        stored = sorted((datastore / unit / "L1").iterdir())
        assert [p.name for p in stored] == [f"nasa-logo-file-{i}-perm.png" for i in range(4)]
        for image, path in enumerate(stored):
            with Image.open(path) as png:
                expected = pixels(set_number, image)[..., CHANNEL_ORDER]
                np.testing.assert_array_equal(np.asarray(png.convert("RGB")), expected)


def assert_averages_right(datastore: Path, images: tuple[int, ...] = (0, 1, 2, 3)) -> None:
    for set_number, unit in ((1, "set-1"), (2, "set-2")):
        flipped = []
        for image in images:
            permuted = pixels(set_number, image)[..., CHANNEL_ORDER]
            flipped += [np.fliplr(permuted), np.flipud(permuted)]
        expected = np.rint(np.mean(np.stack(flipped).astype(float), axis=0))
        with Image.open(datastore / unit / "L3" / "averaged-image.png") as png:
            np.testing.assert_array_equal(np.asarray(png), expected)


def test_each_node_runs_on_its_queue_and_a_restart_moves_a_task_to_another(
    network: Network,
) -> None:
    """Each node's stages and subtasks run only on the hosts consuming its queue; a restart
    with ``--queue`` moves a failed task, its stages following from then on."""
    network.cli("params", "set", "algorithm", "throw_exception_subtask_0=true")
    try:
        instance = int(network.json("submit", "sample")["id"])
        assert network.wait(instance) == 1
        moved, stays = network.json("tasks", instance)
        network.cli("restart", moved["id"], "--mode", "resubmit", "--queue", "hostB")
        assert network.wait(instance) == 1
        subtasks = network.json("subtasks", moved["id"])
        assert [(s["worker_host"], s["attempts"]) for s in subtasks] == [
            ("worker@hostB", 2),
            *[("worker@hostA", 1)] * 3,
        ]
        network.cli("restart", "--instance", instance, "--mode", "resume-current-step")
        assert network.wait(instance) == 0
    finally:
        network.cli("params", "set", "algorithm", "throw_exception_subtask_0=false")
    tasks = network.read(instance)
    assert subtask_hosts(tasks) == {
        "permuter": {"worker@hostA", "worker@hostB"},
        "flip": {"worker@hostB"},
        "averaging": {"worker@hostA"},
    }
    for task in tasks:
        queue = "hostB" if task["id"] == moved["id"] else QUEUES[task["node"]]
        assert task["worker_host"] == f"worker@{queue}", task
    assert_averages_right(network.datastore, images=(1, 2, 3))  # subtask 0 abandoned
    [detail] = [t for t in tasks if t["id"] == moved["id"]]
    assert detail["execution"]["queue"] == "hostB"
    # A restart's own transaction (on the operator's host) puts the task back and, for a
    # resubmit, queues its subtask; every step after that is a worker's.
    by_stages = [
        e
        for e in detail["history"]
        if e["attempt"] > 1
        and not e["message"].startswith("restart")
        and not e["message"].endswith("queued in 1 message")
    ]
    assert {e["p_state"] for e in by_stages} >= {"ALGORITHM_EXECUTING", "COMPLETE"}
    assert {e["host"] for e in by_stages} == {"worker@hostB"}, "stages follow the task's queue"
    [other] = [t for t in tasks if t["id"] == stays["id"]]
    assert {e["host"] for e in other["history"] if e["p_state"] == "COMPLETE"} == {"worker@hostA"}


def test_a_worker_host_dies_mid_run_and_another_host_finishes_the_work(network: Network) -> None:
    """hostA loses power mid-permuter; a worker on hostB also consuming queue hostA goes on."""
    network.start_workers(("hostB", "hostA", "spare@hostB", 2))
    # Long enough that hostA dies with subtasks in flight, however busy the machine.
    network.cli("params", "set", "algorithm", "execution_pause_seconds=8")
    for old in network.datastore.glob("set-*/L1"):  # what this run stores, alone
        shutil.rmtree(old)
    instance = int(network.json("submit", "sample", "--end-node", "permuter")["id"])

    network.running_on(instance, "worker@hostA")
    network.hosts["hostA"].kill_everything()
    killed_at = time.monotonic()
    assert network.wait(instance, timeout=60) == 0, network.report(instance)
    recovered_after = time.monotonic() - killed_at
    # What hostA was running when it died ran again, on the spare worker of hostB (a subtask
    # seen running may have finished before the kill landed: then it ran once).
    tasks = network.read(instance)
    again = [subtask for task in tasks for subtask in task["subtasks"] if subtask["attempts"] > 1]
    assert again, "hostA died with work in flight"
    assert {s["worker_host"] for s in again} == {"spare@hostB"}, again
    for task in tasks:
        assert (task["p_state"], task["error"]) == ("COMPLETE", False)
        assert task["completed_subtasks"] == task["total_subtasks"] and not task["failed_subtasks"]
    assert_permuted_right(network.datastore)
    print(f"instance completed {recovered_after:.1f} s after hostA was killed")


def test_the_broker_and_the_database_are_reached_over_verified_tls_only(
    network: Network,
) -> None:
    """Plain connections are refused by the central host, and a certificate from another
    CA is refused by the client: each a one-line error naming the broker or database."""
    other = make_certificates(network.shared / "other-ca", CENTRAL_ADDRESS)
    plain_broker = f"redis://:{REDIS_PASSWORD}@{CENTRAL_ADDRESS}:{REDIS_PORT}/0"
    plain_database = f"{network.env['PIPELINE_DATABASE_URL']}?sslmode=disable"
    attempts = [
        (("instances",), {"PIPELINE_DATABASE_CA_FILE": str(other.ca)}, "database unreachable"),
        (("instances",), {"PIPELINE_DATABASE_URL": plain_database}, "no encryption"),
        (("submit", "sample"), {"PIPELINE_BROKER_CA_FILE": str(other.ca)}, "broker unreachable"),
        (("submit", "sample"), {"PIPELINE_BROKER_URL": plain_broker}, "broker unreachable"),
    ]
    before = network.json("instances")
    for args, env, expected in attempts:
        result = network.cli(*args, check=False, **env)
        assert result.returncode == 1, (env, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (env, result.stderr)
    assert network.json("instances") == before
