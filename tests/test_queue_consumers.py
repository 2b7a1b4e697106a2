"""A queue nobody consumes is an alert naming it, not a silence: work routed to a queue no
worker listens on waits, the reconciler says which queue and how to serve it, and the
alert is cleared once a worker consumes it (and the work then completes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Cluster, started_cluster, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("queue-consumers")]

ROUTED = """
name: routed
description: One node on a queue of its own.
data_file_types:
  note: {location: "{unit}/in", pattern: "*.txt"}
nodes:
  - name: touch
    algorithm: tests.algorithms:noop
    inputs: [note]
    execution: {queue: gpu}
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with started_cluster(PIPELINE_WORKER_QUEUES="default", PIPELINE_CLUSTER_SERVICES="") as made:
        yield made


def queue_alerts(cluster: Cluster) -> list[dict]:
    return [a for a in cluster.json("alerts", "--all") if "queue 'gpu'" in a["message"]]


def test_a_queue_no_worker_consumes_is_alerted_and_cleared_when_one_does(
    cluster: Cluster, tmp_path: Path
) -> None:
    definition = tmp_path / "routed.yaml"
    definition.write_text(ROUTED)
    cluster.cli("definitions", "import", definition)
    notes = cluster.datastore / "r1" / "in"
    notes.mkdir(parents=True)
    (notes / "a.txt").write_text("a")
    instance = int(cluster.json("submit", "routed")["id"])

    [alert] = wait_for(lambda: queue_alerts(cluster), timeout=60, what="the queue's alert")
    assert alert["severity"] == "error" and alert["cleared_at"] is None
    assert alert["message"] == (
        "no worker consumes queue 'gpu': 1 task waits on it"
        " (start one: pipeline worker --queues gpu)"
    )
    gpu = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "worker", "--queues", "gpu", "--hostname", "gpu-01"],
        env=cluster.env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        cluster.wait(instance)
        wait_for(
            lambda: queue_alerts(cluster)[0]["cleared_at"] is not None,
            timeout=60,
            what="the alert cleared",
        )
        assert len(queue_alerts(cluster)) == 1, "one alert for the episode"
    finally:
        os.killpg(gpu.pid, signal.SIGTERM)
        gpu.wait(timeout=60)
