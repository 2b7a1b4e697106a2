"""The HTTP API as ``pipeline cluster start`` runs it, against a real cluster, and the Python
client that scripts use. (The routes, their errors and the schema are in ``test_api.py``.)

The cluster is shared with the other modules of xdist group ``full-cluster``; the tests
run in file order.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from pipeline.interfaces.client import ApiError, Client, healthy
from pipeline.settings import API_PREFIX
from tests.support import PIPELINE, SAMPLE_COMPLETED, Cluster, free_port, rows, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("full-cluster")]

#: Seconds an instance of the sample pipeline gets to reach a stopped state.
INSTANCE_TIMEOUT = 120


@dataclass
class Api:
    """The module's cluster and an HTTP client of its API that sends the bearer token."""

    cluster: Cluster
    url: str
    token: str
    http: httpx.Client

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def instance_state(self, instance_id: int) -> str:
        return self.http.get(f"/instances/{instance_id}").json()["state"]

    def wait_state(self, instance_id: int, state: str) -> None:
        wait_for(
            lambda: self.instance_state(instance_id) == state,
            timeout=INSTANCE_TIMEOUT,
            what=f"instance {instance_id} to be {state}",
        )


@pytest.fixture(scope="module")
def api(full_cluster: Cluster) -> Iterator[Api]:
    found = full_cluster.json("cluster", "credentials")
    url, token = found["api_url"], found["api_token"]
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url + API_PREFIX, headers=headers, timeout=30) as http:
        yield Api(full_cluster, url, token, http)


@pytest.fixture(scope="module")
def completed(api: Api) -> dict[str, Any]:
    """An instance of the sample's permuter node submitted over HTTP and run to COMPLETED."""
    api.cluster.set_parameters(throw_exception_subtask_0=False, execution_pause_seconds=0)
    response = api.http.post("/instances", json={"pipeline": "sample", "end_node": "permuter"})
    assert response.status_code == 201, response.text
    submitted = response.json()
    api.wait_state(submitted["id"], "COMPLETED")
    return {**submitted, "location": response.headers["location"]}


def test_cluster_start_runs_the_api_and_status_shows_its_url(api: Api) -> None:
    status = {row["name"]: row for row in api.cluster.json("cluster", "status")}
    assert status["api"]["alive"] and status["api"]["url"] == api.url
    answer = httpx.get(f"{api.url}{API_PREFIX}/healthz")
    assert (answer.status_code, answer.json()["status"]) == (200, "ok")
    running = wait_for(
        lambda: httpx.get(f"{api.url}{API_PREFIX}/healthz").json()["reconciler_running"],
        what="the health route to see beat's reconciler run",
    )
    assert running is True


def test_submit_by_http_and_the_instance_completes(api: Api, completed: dict[str, Any]) -> None:
    instance = completed["id"]
    assert completed["location"] == f"{API_PREFIX}/instances/{instance}"
    assert completed["pipeline"] == "sample" and len(completed["tasks"]) == 2
    assert completed["state"] in {"INITIALIZED", "PROCESSING"}

    detail = api.http.get(f"/instances/{instance}").json()
    assert detail["nodes"] == {"permuter": "DONE"}
    assert (detail["tasks"], detail["completed_subtasks"], detail["failed_subtasks"]) == (2, 8, 0)
    tasks = api.http.get(f"/instances/{instance}/tasks").json()
    assert rows(tasks) == SAMPLE_COMPLETED[:2]
    first = tasks[0]["id"]
    subtasks = api.http.get(f"/tasks/{first}/subtasks").json()
    assert [(s["index"], s["state"], s["attempts"], s["error"]) for s in subtasks] == [
        (i, "COMPLETE", 1, "") for i in range(4)
    ]
    [log] = api.http.get(f"/tasks/{first}/logs", params={"subtask": 2}).json()
    assert "permuter: subtask 2 of set-1" in log["text"]


def test_the_python_client_restarts_a_failed_task(api: Api) -> None:
    with Client(api.url, api.token) as client:
        instance = failing_instance(api, client)
        failed = client.tasks(instance)
        assert {(t["state"], t["counts"]) for t in failed} == {
            ("ERROR - ALGORITHM_COMPLETE", "3/4 (1)")
        }
        first = failed[0]["id"]
        assert [s["state"] for s in client.subtasks(first)] == ["FAILED", *["COMPLETE"] * 3]
        assert "subtask 0 failed on purpose" in client.logs(first, subtask=0)[0]["text"]

        with pytest.raises(ApiError) as refused:
            client.restart({first: "resume-current-step"}, {"throw_exception_subtask_0": False})
        assert refused.value.status == 409
        assert "throw_exception_subtask_0 is an algorithm parameter" in refused.value.message
        dry = client.restart_failed(instance, "resume-current-step", dry_run=True)
        assert [(o["task_id"], o["ok"], o["start_from"]) for o in dry] == [
            (t["id"], True, "STORING") for t in failed
        ]
        assert client.tasks(instance) == failed, "a refusal and a dry run change nothing"

        outcomes = client.restart({t["id"]: "resume-current-step" for t in failed})
        assert all(o["ok"] and o["start_from"] == "STORING" for o in outcomes)
        api.wait_state(instance, "COMPLETED")
        final = {(t["node"], t["unit_of_work"]): t for t in client.tasks(instance)}
        for unit in ("set-1", "set-2"):
            permuter = final[("permuter", unit)]
            assert (permuter["state"], permuter["counts"]) == ("COMPLETE", "3/4 (1)")
        history = [event["message"] for event in client.task(first)["history"]]
        assert "restart: resume-current-step" in history

        # The datastore's ledger through the client: three permuted images per set, stored
        # by this instance, each traced back to the raw image received.
        stored = client.files(instance=instance, unit="set-1")
        assert sorted(f["path"] for f in stored) == [
            f"set-1/L1/nasa-logo-file-{i}-perm.png" for i in (1, 2, 3)
        ]
        chain = client.lineage("set-1/L1/nasa-logo-file-2-perm.png")
        assert [(s["file"]["instance_id"], s["file"]["origin"]) for s in chain["steps"]] == [
            (instance, "task"),
            (None, "received"),
        ]


def failing_instance(api: Api, client: Client) -> int:
    """An instance whose permuter tasks end ERROR - ALGORITHM_COMPLETE, submitted by HTTP."""
    api.cluster.set_parameters(throw_exception_subtask_0=True, execution_pause_seconds=0)
    try:
        instance = client.submit("sample", end_node="permuter")["id"]
    finally:  # the instance froze the value: later submissions are left unaffected
        api.cluster.set_parameters(throw_exception_subtask_0=False)
    api.wait_state(instance, "ERRORS_STALLED")
    return instance


#: Instances of the whole sample submitted at once by the concurrency test.
CONCURRENT = 20


def test_concurrent_instances_each_consume_their_own_versions(api: Api) -> None:
    """20 instances of the sample submitted through the API at once, their permuters
    storing the same paths over each other's: every one completes, and each averaged
    image it stored has a lineage of that instance alone."""
    from concurrent.futures import ThreadPoolExecutor

    api.cluster.set_parameters(throw_exception_subtask_0=False, execution_pause_seconds=0)

    def submit(_: int) -> int:
        response = api.http.post("/instances", json={"pipeline": "sample"})
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    with ThreadPoolExecutor(CONCURRENT) as pool:
        instances = list(pool.map(submit, range(CONCURRENT)))
    stopped = {"COMPLETED", "ERRORS_STALLED", "ERRORS_RUNNING"}
    wait_for(
        lambda: all(api.instance_state(i) in stopped for i in instances),
        timeout=INSTANCE_TIMEOUT * 5,
        what=f"{CONCURRENT} concurrent instances to stop",
    )
    states = {i: api.instance_state(i) for i in instances}
    failures = [
        (i, task["node"], task["unit_of_work"], task["error_message"])
        for i, state in states.items()
        if state != "COMPLETED"
        for task in api.http.get(f"/instances/{i}/tasks").json()
        if task["error"]
    ]
    assert set(states.values()) == {"COMPLETED"}, failures
    for instance in instances:
        averaged = api.http.get("/files", params={"instance": instance, "unit": "set-1"}).json()
        [average] = [f for f in averaged if f["node"] == "averaging"]
        chain = api.http.get(
            "/lineage", params={"path": average["path"], "version": average["id"]}
        ).json()
        producers = {s["file"]["instance_id"] for s in chain["steps"]} - {None}
        assert producers == {instance}, f"instance {instance}'s average: {producers}"


def test_unreachable_database_or_broker_gives_503(api: Api) -> None:
    port = free_port()
    broken = {
        "database": {
            "PIPELINE_DATABASE_URL": f"postgresql+psycopg://pipe:secret@127.0.0.1:{port}/db"
        },
        "broker": {"PIPELINE_BROKER_URL": f"redis://:secret@127.0.0.1:{port}/0"},
    }
    ports = {what: free_port() for what in broken}
    before = api.http.get("/instances").json()
    processes = {
        what: subprocess.Popen(
            [PIPELINE, "api", "--port", str(ports[what])],
            env={**api.cluster.env, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for what, env in broken.items()
    }
    try:
        urls = {what: f"http://127.0.0.1:{ports[what]}" for what in broken}
        for url in urls.values():
            wait_for(lambda url=url: healthy(url), timeout=30, what=f"the API at {url}")
        with Client(urls["database"], api.token) as client, pytest.raises(ApiError) as error:
            client.instances()
        assert error.value.status == 503
        assert error.value.message.startswith(
            f"database unreachable at postgresql+psycopg://pipe:***@127.0.0.1:{port}/db"
        )
        with Client(urls["broker"], api.token) as client, pytest.raises(ApiError) as error:
            client.submit("sample")
        assert error.value.status == 503
        assert error.value.message.startswith(
            f"broker unreachable at redis://:***@127.0.0.1:{port}"
        )
        assert "secret" not in error.value.message
    finally:
        for process in processes.values():
            process.terminate()
            process.wait(timeout=30)
    assert api.http.get("/instances").json() == before, "nothing was submitted"


def test_client_without_a_token_is_told_where_to_find_one(api: Api) -> None:
    with Client(api.url, token="") as client, pytest.raises(ApiError) as error:
        client.pipelines()
    assert error.value.status == 401
    assert "`pipeline cluster credentials` shows it" in error.value.message


def test_client_reports_an_api_that_does_not_answer() -> None:
    with (
        Client(f"http://127.0.0.1:{free_port()}", "token") as client,
        pytest.raises(ApiError) as error,
    ):
        client.pipelines()
    assert error.value.status == 503 and "HTTP API unreachable at" in error.value.message
