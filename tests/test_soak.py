"""The chaos soak (``tests/soak.py``): instances submitted, some failing a subtask on
purpose, and restarted in every restart mode while workers, a pool process, beat, Redis, the
HTTP API and the supervisor are killed, the queues dropped and Redis's disk filled and
freed, sometimes two faults at once. Here the short version (each fault once, then two
pairs at once, in ``make test``); ``make soak`` runs it for ``SOAK_SECONDS`` (600) with
faults at random and writes its report.

On PostgreSQL, the production database, with the supervisor on: nobody starts anything
again by hand.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from pipeline.operations.modes import MODES
from tests.soak import KINDS, Soak
from tests.support import LEASE_SECONDS, PostgresServer, make_cluster, tmpfs

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.postgres,
    pytest.mark.chaos,
    pytest.mark.xdist_group("soak"),
]


def test_the_soak_ends_with_every_invariant_held(
    postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    seconds = float(os.environ.get("SOAK_SECONDS", "0"))
    seed = int(os.environ.get("SOAK_SEED", str(int(time.time()))))
    cluster = make_cluster(
        "postgres",
        postgres,
        PIPELINE_LEASE_SECONDS=str(LEASE_SECONDS),
        PIPELINE_CLUSTER_SERVICES="api",
        PIPELINE_WORKERS="2",
    )
    try:
        with tmpfs(cluster.home / "redis", 32) as redis_disk:
            cluster.start(workers=2)
            cluster.activate(monkeypatch)
            report = Soak(cluster, redis_disk, seconds, seed).run()
            cluster.stop()
    finally:
        cluster.stop()
        if logs := os.environ.get("SOAK_LOGS"):  # kept for a look after
            shutil.copytree(cluster.home / "logs", logs, dirs_exist_ok=True)
        shutil.rmtree(cluster.home, ignore_errors=True)

    print(f"soak of {seconds:g} s (seed {seed}):", report.figures())
    for fault in report.faults:
        print(f"  {fault}")
    for refusal in report.refusals:
        print(f"  restart refused: {refusal}")
    for alert in report.unexplained_alerts:
        print(f"  alert without a fault: {alert}")
    if written := os.environ.get("SOAK_REPORT"):
        Path(written).parent.mkdir(parents=True, exist_ok=True)
        Path(written).write_text(report.as_json())
    figures = report.figures()
    assert {fault.kind for fault in report.faults} == set(KINDS)
    assert figures["faults_recovered"] == figures["faults_injected"], report.faults
    assert figures["faults_alerted"] == figures["faults_injected"], report.faults
    assert figures["faults_overlapped"] > 0, "faults at once"
    assert figures["failing_instances"] > 0
    assert set(report.restarts) == set(MODES), report.restarts
    assert report.unexplained_alerts == [], "alerts without a fault"
    assert report.stored_twice == []
    assert set(report.instances) == {"COMPLETED"}, report.instances
    assert report.ledger_rows_checked > 0
