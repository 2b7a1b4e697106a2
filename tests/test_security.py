"""A cluster on a shared host, looked at by another user of the machine: its files cannot be
read, its Redis refuses commands without the password, its HTTP API and Flower want their
credentials; and a home made before any of that is upgraded in place by ``cluster start``.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import stat
import subprocess
import tempfile
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from pipeline.interfaces.client import Client
from pipeline.settings import API_PREFIX, HEALTHZ
from tests.support import PIPELINE, Cluster, assert_one_line_error, clean_env, make_certificates

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("security")]

#: What the other user tries, with the standard library only (the system's Python): each
#: attempt prints one line, "<what> refused" or "<what> ALLOWED".
PROBE = textwrap.dedent(
    """
    import base64, json, socket, sys, urllib.error, urllib.request
    home, redis_port, api_url, flower_url, files = json.loads(sys.argv[1])

    def attempt(what, call):
        try:
            call()
        except (OSError, urllib.error.HTTPError) as exc:
            print(f"{what} refused ({type(exc).__name__})")
        else:
            print(f"{what} ALLOWED")

    for name in files:
        attempt(f"read {name}", lambda name=name: open(f"{home}/{name}", "rb").read(1))
    attempt("list the home", lambda: __import__("os").listdir(home))

    def redis_command(command):
        def call():
            with socket.create_connection(("127.0.0.1", redis_port), timeout=10) as s:
                s.sendall(command.encode() + b"\\r\\n")
                reply = s.recv(200)
            if not reply.startswith((b"+", b":", b"*", b"$")):
                raise PermissionError(reply.decode().strip())
        return call

    attempt("redis PING", redis_command("PING"))
    attempt("redis LPUSH", redis_command('LPUSH pipeline.operations "{}"'))
    attempt("redis KEYS", redis_command("KEYS *"))
    attempt("api GET /instances", lambda: urllib.request.urlopen(f"{api_url}/api/v1/instances"))
    attempt("flower GET /api/workers", lambda: urllib.request.urlopen(f"{flower_url}/api/workers"))
    """
)


def queues(broker: redis.Redis) -> dict[bytes, int]:
    """The length of each queue on the broker (the reconciler's own short-lived keys aside)."""
    return {key: broker.llen(key) for key in broker.scan_iter() if broker.type(key) == b"list"}


@pytest.fixture
def other_user() -> Iterator[str]:
    """A second Unix user of this machine, removed afterwards."""
    name = f"pl{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/false", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False)


@pytest.fixture(scope="module")
def shared_host_cluster() -> Iterator[tuple[Cluster, int]]:
    """A started cluster whose home is made by ``cluster init`` in a directory everyone may
    enter, as a home under a shared file system would be, and an instance it ran."""
    parent = Path(tempfile.mkdtemp(prefix="pipeline-shared-"))
    parent.chmod(0o755)
    home = parent / "home"
    made = Cluster(home=home, env=clean_env(PIPELINE_HOME=str(home)), backend="sqlite")
    try:
        made.cli("cluster", "init")
        made.start()
        instance = made.submit("--end-node", "permuter")
        made.wait(instance)
        yield made, instance
    finally:
        made.stop()
        shutil.rmtree(parent, ignore_errors=True)


def test_another_user_can_read_nothing_and_command_nothing(
    shared_host_cluster: tuple[Cluster, int], other_user: str
) -> None:
    cluster, instance = shared_host_cluster
    [task] = [t for t in cluster.tasks(instance) if t["unit_of_work"] == "set-1"]
    task_dir = Path(cluster.json("task", task["id"])["task_dir"])
    stored = next(cluster.datastore.glob("set-1/L1/*-perm.png"))
    files = [
        "pipeline.db",
        "settings.toml",
        "logs/worker1.log",
        "logs/api.out",
        str(task_dir.relative_to(cluster.home) / "st-0" / "subtask.log"),
        str(stored.relative_to(cluster.home)),
    ]
    assert all((cluster.home / name).exists() for name in files), files
    credentials = cluster.json("cluster", "credentials")
    broker = redis.Redis.from_url(credentials["broker_url"])
    before = (cluster.json("instances"), queues(broker))

    probe = [
        str(cluster.home),
        int(credentials["broker_url"].rsplit(":", 1)[1].split("/")[0]),
        credentials["api_url"],
        credentials["flower_url"],
        files,
    ]
    result = subprocess.run(
        ["runuser", "-u", other_user, "--", "/usr/bin/python3", "-c", PROBE, json.dumps(probe)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(files) + 6, result.stdout
    allowed = [line for line in lines if "ALLOWED" in line]
    assert allowed == [], result.stdout

    assert (cluster.json("instances"), queues(broker)) == before, "nothing changed"
    assert broker.llen("pipeline.operations") == 0


def test_the_home_and_what_the_cluster_writes_are_private(
    shared_host_cluster: tuple[Cluster, int],
) -> None:
    """Permissions as the owner sees them: no bit for group or others anywhere in the home
    (the cluster's processes run with a 077 umask)."""
    cluster, _ = shared_host_cluster
    opened = []
    for root, directories, names in os.walk(cluster.home):
        for name in [*directories, *names, "."]:
            path = Path(root) / name
            if path.is_symlink() or path.is_socket():
                continue
            if stat.S_IMODE(path.stat().st_mode) & 0o077:
                opened.append(f"{oct(stat.S_IMODE(path.stat().st_mode))} {path}")
    assert opened == []


def test_a_home_made_before_passwords_is_upgraded_by_the_next_start(
    new_cluster: Callable[..., Cluster],
) -> None:
    """A home of an older version: no Redis password, files readable by everyone, an
    instance already run. The next ``cluster start`` gives its Redis a password, refuses
    the commands no client needs, and makes the home private; its instances are all there
    and new ones run."""
    cluster = new_cluster(PIPELINE_CLUSTER_SERVICES="")
    cluster.start()
    first = cluster.submit("--end-node", "permuter")
    cluster.wait(first)
    cluster.stop()
    settings = cluster.home / "settings.toml"
    lines = settings.read_text().splitlines()
    settings.write_text("\n".join(line for line in lines if "redis_password" not in line) + "\n")
    opened = (cluster.home, cluster.home / "pipeline.db", cluster.home / "logs")
    for path in opened:
        path.chmod(0o755 if path.is_dir() else 0o644)

    cluster.start()
    broker_url = cluster.json("cluster", "credentials")["broker_url"]
    assert "redis_password" in settings.read_text()
    port = int(broker_url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()
    broker = redis.Redis.from_url(broker_url)
    for command in ("FLUSHALL", "FLUSHDB", "CONFIG GET *", "DEBUG SLEEP 0", "SHUTDOWN NOSAVE"):
        with pytest.raises(redis.ResponseError, match="unknown command"):
            broker.execute_command(*command.split())
    for path in opened:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    assert [i["id"] for i in cluster.json("instances")] == [first]
    second = cluster.submit("--end-node", "permuter")
    cluster.wait(second)


def test_a_worker_refuses_a_broker_or_database_elsewhere_without_a_password(
    new_cluster: Callable[..., Cluster],
) -> None:
    """Between hosts a broker or database without a password is open to anyone on the
    network: ``pipeline worker`` refuses to use one (before connecting to it) unless told
    the network is private."""
    cluster = new_cluster(PIPELINE_CLUSTER_SERVICES="")
    elsewhere = {
        "PIPELINE_BROKER_URL": "redis://10.11.12.13:6379/0",
        "PIPELINE_DATABASE_URL": "postgresql+psycopg://pipeline@10.11.12.13:5432/pipeline",
    }
    for key, url in elsewhere.items():
        what = "broker" if "BROKER" in key else "database"
        result = subprocess.run(
            [PIPELINE, "worker"],
            env={**cluster.env, key: url},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert_one_line_error(result, f"{what} at {url} has no password")


def test_the_api_and_flower_serve_https_once_given_a_certificate(
    new_cluster: Callable[..., Cluster], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a certificate and key set, the HTTP API and Flower answer over HTTPS only; a
    client that trusts the CA (the CLI's settings, the Python client) gets through, one
    that does not is refused the certificate."""
    tls = make_certificates(tmp_path / "tls")
    cluster = new_cluster(
        PIPELINE_TLS_CERTFILE=str(tls.certificate),
        PIPELINE_TLS_KEYFILE=str(tls.key),
        PIPELINE_TLS_CA_FILE=str(tls.ca),
    )
    cluster.start()
    credentials = cluster.json("cluster", "credentials")
    api, flower = credentials["api_url"], credentials["flower_url"]
    assert api.startswith("https://127.0.0.1:") and flower.startswith("https://127.0.0.1:")
    trusted = ssl.create_default_context(cafile=str(tls.ca))
    assert httpx.get(f"{api}{API_PREFIX}{HEALTHZ}", verify=trusted).status_code == 200
    assert httpx.get(f"{flower}/healthcheck", verify=trusted).status_code == 200
    login = (credentials["flower_user"], credentials["flower_password"])
    assert httpx.get(f"{flower}/api/workers", verify=trusted).status_code == 401
    assert httpx.get(f"{flower}/api/workers", verify=trusted, auth=login).status_code == 200
    for url in (api, flower):
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(url, verify=ssl.create_default_context())  # the system's CAs only
        with pytest.raises(httpx.HTTPError):
            httpx.get(url.replace("https://", "http://"), timeout=5)  # no plain HTTP

    cluster.activate(monkeypatch)
    with Client() as client:
        assert client.instances() == []


@pytest.fixture
def team() -> Iterator[str]:
    """A Unix group of this machine, removed afterwards."""
    name = f"pl{uuid.uuid4().hex[:8]}"
    subprocess.run(["groupadd", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["groupdel", name], check=False)


def test_a_home_shared_with_a_group_is_the_groups_to_read(
    new_cluster: Callable[..., Cluster], team: str
) -> None:
    """``group`` shares the home with a team: its files the group's to read, no one
    else's; the settings, with the cluster's secrets, the owner's alone."""
    cluster = new_cluster(PIPELINE_GROUP=team)
    home = cluster.home
    assert stat.S_IMODE(home.stat().st_mode) == 0o2750 and home.group() == team
    image = next(cluster.datastore.glob("set-1/**/*.png"))
    for path in (image, image.parent, cluster.home / "logs"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert path.group() == team and mode & 0o040 and not mode & 0o007, (oct(mode), path)
    assert stat.S_IMODE((home / "settings.toml").stat().st_mode) == 0o600
