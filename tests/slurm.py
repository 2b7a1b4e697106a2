"""A real one-host Slurm for the tests and the benchmarks (figure g): munged (as the munge
user, on a socket of its own), slurmctld and slurmd with a ``slurm.conf`` in a temporary
directory on free ports, stopped by the pids in their pid files. Debian's ``slurm-wlm``
and ``munge`` (``tools/install-system-packages.sh``; ``make test`` installs them)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from tests.support import free_port, wait_for

CONF = """\
ClusterName=pipelinetest
SlurmctldHost={host}
SlurmctldPort={controller_port}
SlurmdPort={node_port}
AuthType=auth/munge
AuthInfo=socket={base}/munge/munge.socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmUser=root
SlurmdUser=root
ReturnToService=2
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={base}/slurmctld.log
SlurmdLogFile={base}/slurmd.log
MinJobAge=300
MaxArraySize=10001
MailProg=/bin/true
NodeName={host} CPUs={cpus} RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


#: The commands a one-host Slurm needs here.
TOOLS = ("munged", "slurmctld", "slurmd", "sbatch")


class SlurmUnavailable(Exception):
    """Slurm or munge is not installed here."""


def missing() -> str:
    """Why no one-host Slurm can start here ('' when it can)."""
    absent = [tool for tool in TOOLS if shutil.which(tool) is None]
    return f"{', '.join(absent)} not installed (apt-get install slurm-wlm munge)" if absent else ""


@dataclass
class OneHostSlurm:
    base: Path

    @property
    def conf(self) -> Path:
        return self.base / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *command: str) -> str:
        return subprocess.run(
            command, env=self.env, capture_output=True, text=True, check=True, timeout=60
        ).stdout

    def jobs(self, name: str) -> list[str]:
        """Each element of the jobs named ``name`` still queued or running: 'ID STATE'."""
        return self.run(
            "squeue", "--noheader", "--array", f"--name={name}", "--format=%i %T"
        ).split("\n")[:-1]

    def start_controller(self) -> None:
        subprocess.run(["slurmctld", "-f", str(self.conf)], env=self.env, check=True)
        wait_for(self.answers, what="slurmctld to answer")

    def stop_controller(self) -> None:
        _stop(self.base / "slurmctld.pid")

    def answers(self) -> bool:
        found = subprocess.run(
            ["scontrol", "ping"], env=self.env, capture_output=True, text=True, timeout=60
        )
        return found.returncode == 0 and "UP" in found.stdout


def _stop(pid_file: Path) -> None:
    """Stop the daemon whose pid the file holds, and wait until it is gone."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(gone, timeout=60, what=f"{pid_file.name} to stop")


@contextmanager
def one_host_slurm() -> Iterator[OneHostSlurm]:
    """A one-host Slurm whose node is idle, stopped (by pid) afterwards;
    ``SlurmUnavailable`` when it cannot be installed here (``missing``)."""
    if why := missing():
        raise SlurmUnavailable(why)
    base = Path(tempfile.mkdtemp(prefix="pipeline-slurm-"))
    base.chmod(0o755)  # munged checks every directory above its socket
    munge = base / "munge"
    munge.mkdir()
    munge.chmod(0o755)  # whatever the umask: another test of the process may have set one
    shutil.chown(munge, "munge", "munge")
    for name in ("state", "spool"):
        (base / name).mkdir()
    slurm = OneHostSlurm(base)
    slurm.conf.write_text(
        CONF.format(
            host=socket.gethostname(),
            base=base,
            controller_port=free_port(),
            node_port=free_port(),
            cpus=os.cpu_count() or 1,
        )
    )
    try:
        options = [
            f"--socket={munge}/munge.socket",
            f"--pid-file={munge}/munged.pid",
            f"--log-file={munge}/munged.log",
            f"--seed-file={munge}/munged.seed",
        ]
        started = subprocess.run(
            ["runuser", "-u", "munge", "--", "munged", *options], capture_output=True, text=True
        )
        if started.returncode != 0:
            log = munge / "munged.log"
            said = log.read_text()[-2000:] if log.exists() else "(no log)"
            raise AssertionError(f"munged exited {started.returncode}: {started.stderr}{said}")
        slurm.start_controller()
        subprocess.run(["slurmd", "-f", str(slurm.conf)], env=slurm.env, check=True)
        wait_for(lambda: slurm.run("sinfo", "--noheader", "--format=%T").strip() == "idle")
        yield slurm
    finally:
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            _stop(base / pid_file)
        shutil.rmtree(base, ignore_errors=True)
