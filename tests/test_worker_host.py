"""docs/worker-host.md is a test: a new user's steps, block by block, on separate hosts.

The hosts are network namespaces joined by a bridge (the helpers of test_multihost.py),
each with a file system of its own (``Host.own_files``: its own /etc, /opt, /var and /run
over this machine's, and one directory mounted at /srv on both, the shared file system).
The build host is this machine, in a copy of the checkout. Each block runs on the hosts
its ``host=`` names, as root, in a fresh bash (``tests/runnable_docs.py``); ``systemctl``
and ``scp`` are stand-ins (``tests/standins/``) since no systemd and no sshd run here.
The guide installs the wheel it builds into a new virtual environment on each host, sets
up Redis and PostgreSQL as packaged by Debian with passwords and TLS, starts the cluster
on the central host and a worker on the worker host, and runs the sample there; the test
then checks what the guide's output cannot show: that the worker runs the wheel's code,
and that every task and subtask ran on it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runnable_docs import Shell, blocks, expected_lines, run_across_hosts
from tests.support import (
    REPO,
    Host,
    ip,
    link_hosts,
    namespaces_unavailable,
    unavailable,
)

pytestmark = pytest.mark.xdist_group("multihost")

GUIDE = REPO / "docs" / "worker-host.md"
#: The guide's hosts and their addresses, as its table gives them.
ADDRESSES = {"central": "10.20.0.1", "worker-01": "10.20.0.2"}
#: A root shell's PATH on Debian, the stand-ins for systemd and ssh first.
PATH = f"{REPO / 'tests' / 'standins'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Where the worker's code must come from: the wheel, installed into the host's venv.
SITE_PACKAGES = "/opt/pipeline/.venv/lib/python3.11/site-packages/"


def test_the_guide_blocks_recognised() -> None:
    """The conventions as the guide uses them: each host's commands and files, none lost."""
    found = blocks(GUIDE.read_text())
    hosts = {host for block in found for host in block.hosts}
    assert hosts == {"build", *ADDRESSES}
    files = {(block.file, *block.hosts) for block in found if block.file}
    assert files == {("/etc/systemd/system/pipeline-worker.service", "worker-01")}
    assert sum(block.runs and bool(block.hosts) for block in found) >= 10
    assert "instance 1 COMPLETED" in expected_lines(found)


@pytest.fixture
def hosts() -> Iterator[dict[str, Host]]:
    """The guide's central and worker hosts, each a network namespace with its own files;
    everything they ran killed and their files removed afterwards."""
    reason = namespaces_unavailable()
    if reason:
        unavailable(f"worker host guide: {reason}")
    if not shutil.which("redis-server") or not Path("/etc/postgresql").is_dir():
        unavailable(
            "worker host guide: needs redis-server and PostgreSQL (make test installs them)"
        )
    base = Path(tempfile.mkdtemp(prefix="pipeline-guide-", dir="/tmp"))
    base.chmod(0o755)
    (base / "logs").mkdir()
    (base / "shared").mkdir(mode=0o755)
    made = {
        name: Host(name, f"pl{os.getpid()}-{name}", address, base / "logs")
        for name, address in ADDRESSES.items()
    }
    try:
        link_hosts(list(made.values()))
        for host in made.values():
            host.own_files(base / host.name, base / "shared")
        yield made
    finally:
        central = made["central"]
        if central.anchor is not None:  # stopped cleanly: no shared memory left behind
            stop = ["pg_ctlcluster", "15", "main", "stop", "-m", "fast"]
            subprocess.run(central.command(stop), capture_output=True)
        for host in made.values():
            if host.netns in ip("netns", "list").stdout.split():
                host.kill_everything()
                ip("netns", "del", host.netns, check=False)
        shutil.rmtree(base, ignore_errors=True)


def checkout_copy(where: Path) -> Path:
    """The project's files (tracked, and new ones not ignored) copied to ``where``: the
    build writes into its source directory, and must not write into this checkout."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (entry.decode() for entry in listed)):
        if (REPO / name).is_file():
            (where / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, where / name)
    return where


def shells(hosts: dict[str, Host], source: Path) -> dict[str, Shell]:
    """A root shell on each host, with nothing of the test's environment but the stand-ins'
    map of hosts; the build host is this machine, with its own access to PyPI."""
    standins = ",".join(f"{host.address}={host.anchor}" for host in hosts.values())
    plain = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", "STANDIN_HOSTS": standins}
    made = {name: Shell(host.command([]), "/root", plain) for name, host in hosts.items()}
    # The build machine's pip settings (how it reaches PyPI) are the user's own.
    pip = {key: value for key, value in os.environ.items() if key.startswith("PIP_")}
    made["build"] = Shell([], str(source), {**plain, **pip})
    return made


def on(host: Host, command: str) -> str:
    """What a root shell command prints on the host."""
    ran = subprocess.run(
        host.command(["bash", "-c", command]), capture_output=True, text=True, env={"PATH": PATH}
    )
    assert ran.returncode == 0, f"{command} on {host.name}: {ran.stderr}"
    return ran.stdout


@pytest.mark.multihost
@pytest.mark.e2e
def test_the_guide_brings_up_a_worker_host_from_the_wheel(
    hosts: dict[str, Host], tmp_path: Path
) -> None:
    source = checkout_copy(tmp_path / "celery-pipeline")
    run_across_hosts(GUIDE, shells(hosts, source))

    central, worker = hosts["central"], hosts["worker-01"]
    # The worker runs the wheel's code from the host's own venv, not this checkout.
    found = on(
        worker, "/opt/pipeline/.venv/bin/python -c 'import pipeline; print(pipeline.__file__)'"
    )
    assert found.startswith(SITE_PACKAGES), found
    pid = on(worker, "cat /run/pipeline-worker.pid").strip()
    assert "/opt/pipeline/.venv/" in Path(f"/proc/{pid}/cmdline").read_text()
    # Every stage and subtask of the sample ran on the worker host.
    as_pipeline = "runuser -l pipeline -c 'pipeline {} --json'"
    tasks = json.loads(on(central, as_pipeline.format("tasks 1")))
    assert len(tasks) == 6 and {t["worker_host"] for t in tasks} == {"worker@worker-01"}, tasks
    for task in tasks:
        subtasks = json.loads(on(central, as_pipeline.format(f"subtasks {task['id']}")))
        assert {s["worker_host"] for s in subtasks} == {"worker@worker-01"}, subtasks
        assert {s["state"] for s in subtasks} == {"COMPLETE"}, subtasks
