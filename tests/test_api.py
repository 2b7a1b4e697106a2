"""The HTTP API against a real cluster: its `api` process started by `pipeline cluster start`.

One cluster serves the whole module (a cluster start costs seconds); the tests that
change pipeline state run in file order, the schema fuzzing last.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from pipeline.client import API_PREFIX, ApiError, Client, healthy
from tests.conftest import PIPELINE, Cluster, free_port, make_cluster, wait_for

# One worker of a parallel run takes them all: they share one module-scoped cluster, in order.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("api")]

#: Seconds an instance of the sample pipeline gets to reach a stopped state.
INSTANCE_TIMEOUT = 120
#: Hypothesis examples per API operation in the schema fuzzing: bounded to keep the suite fast.
FUZZ_EXAMPLES = 25


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
def api() -> Iterator[Api]:
    cluster = make_cluster("sqlite", None)
    try:
        cluster.start()
        found = cluster.json("cluster", "credentials")
        url, token = found["api_url"], found["api_token"]
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url + API_PREFIX, headers=headers, timeout=30) as http:
            yield Api(cluster, url, token, http)
    finally:
        cluster.stop()
        shutil.rmtree(cluster.home, ignore_errors=True)


@pytest.fixture(scope="module")
def completed(api: Api) -> dict[str, Any]:
    """An instance of the sample pipeline submitted over HTTP and run to COMPLETED."""
    response = api.http.post("/instances", json={"pipeline": "sample"})
    assert response.status_code == 201, response.text
    submitted = response.json()
    api.wait_state(submitted["id"], "COMPLETED")
    return {**submitted, "location": response.headers["location"]}


def test_cluster_start_runs_the_api_and_status_shows_its_url(api: Api) -> None:
    status = {row["name"]: row for row in api.cluster.json("cluster", "status")}
    assert status["api"]["alive"] and status["api"]["url"] == api.url
    answer = httpx.get(f"{api.url}{API_PREFIX}/healthz")
    assert (answer.status_code, answer.json()) == (200, {"status": "ok"})


def test_submit_by_http_and_the_instance_completes(api: Api, completed: dict[str, Any]) -> None:
    instance = completed["id"]
    assert completed["location"] == f"{API_PREFIX}/instances/{instance}"
    assert completed["pipeline"] == "sample" and len(completed["tasks"]) == 2
    assert completed["state"] in {"INITIALIZED", "PROCESSING"}

    detail = api.http.get(f"/instances/{instance}").json()
    assert detail["nodes"] == {"permuter": "DONE", "flip": "DONE", "averaging": "DONE"}
    assert (detail["tasks"], detail["completed_subtasks"], detail["failed_subtasks"]) == (6, 18, 0)
    tasks = api.http.get(f"/instances/{instance}/tasks").json()
    assert [(t["node"], t["unit_of_work"], t["state"], t["counts"]) for t in tasks] == [
        ("permuter", "set-1", "COMPLETE", "4/4 (0)"),
        ("permuter", "set-2", "COMPLETE", "4/4 (0)"),
        ("flip", "set-1", "COMPLETE", "4/4 (0)"),
        ("flip", "set-2", "COMPLETE", "4/4 (0)"),
        ("averaging", "set-1", "COMPLETE", "1/1 (0)"),
        ("averaging", "set-2", "COMPLETE", "1/1 (0)"),
    ]
    first = tasks[0]["id"]
    subtasks = api.http.get(f"/tasks/{first}/subtasks").json()
    assert [(s["index"], s["state"], s["attempts"], s["error"]) for s in subtasks] == [
        (i, "COMPLETE", 1, "") for i in range(4)
    ]
    [log] = api.http.get(f"/tasks/{first}/logs", params={"subtask": 2}).json()
    assert "permuter: subtask 2 of set-1" in log["text"]


def test_api_answers_the_same_json_as_the_cli(api: Api, completed: dict[str, Any]) -> None:
    instance, task = completed["id"], completed["tasks"][0]
    for path, command in [
        (f"/instances/{instance}", ["instances"]),
        (f"/instances/{instance}/tasks", ["tasks", instance]),
        (f"/tasks/{task}", ["task", task]),
        (f"/tasks/{task}/subtasks", ["subtasks", task]),
        (f"/tasks/{task}/logs", ["logs", task]),
        ("/pipelines", ["definitions", "list"]),
        ("/parameter-sets", ["params", "list"]),
        ("/alerts", ["alerts"]),
    ]:
        answer, printed = api.http.get(path).json(), api.cluster.json(*command)
        if command == ["instances"]:
            answer = {key: answer[key] for key in printed[0]}
            printed = next(row for row in printed if row["id"] == instance)
        assert answer == printed, path


def test_restart_of_a_failed_task_by_api_completes_the_instance(api: Api) -> None:
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
            assert final[("averaging", unit)]["counts"] == "1/1 (0)"
        history = [event["message"] for event in client.task(first)["history"]]
        assert "restart: resume-current-step" in history


def failing_instance(api: Api, client: Client) -> int:
    """An instance whose permuter tasks end ERROR - ALGORITHM_COMPLETE, submitted by HTTP."""
    api.cluster.cli("params", "set", "algorithm", "throw_exception_subtask_0=true")
    try:
        instance = client.submit("sample")["id"]
    finally:  # the instance froze the value: later submissions are left unaffected
        api.cluster.cli("params", "set", "algorithm", "throw_exception_subtask_0=false")
    api.wait_state(instance, "ERRORS_STALLED")
    return instance


def test_every_route_but_healthz_needs_the_token(api: Api) -> None:
    schema = httpx.get(f"{api.url}{API_PREFIX}/openapi.json", headers=api.auth).json()
    operations = [
        (method.upper(), path)
        for path, methods in schema["paths"].items()
        for method in methods
        if not path.endswith("/healthz")
    ]
    # The schema itself, an unknown path and a malformed body: 401 first, nothing else.
    operations += [
        ("GET", f"{API_PREFIX}/openapi.json"),
        ("GET", f"{API_PREFIX}/docs"),
        ("GET", "/nowhere"),
    ]
    malformed = httpx.post(
        f"{api.url}{API_PREFIX}/instances",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert malformed.status_code == 401
    assert {
        ("POST", f"{API_PREFIX}/instances"),
        ("GET", f"{API_PREFIX}/tasks/{{task_id}}/logs"),
        ("POST", f"{API_PREFIX}/tasks/restart"),
        ("POST", f"{API_PREFIX}/alerts/{{alert_id}}/ack"),
    } <= set(operations), "the schema lists the routes"
    for method, path in operations:
        url = api.url + re.sub(r"\{[^}]+\}", "1", path)
        for headers, detail in [
            ({}, "missing bearer token"),
            ({"Authorization": "Basic b3BlcmF0b3I6cGFzcw=="}, "missing bearer token"),
            ({"Authorization": f"Bearer {api.token}x"}, "wrong bearer token"),
            ({"Authorization": "Bearer"}, "missing bearer token"),
        ]:
            answer = httpx.request(method, url, headers=headers, json={})
            assert answer.status_code == 401, (method, path, headers)
            assert answer.headers["www-authenticate"] == "Bearer"
            assert answer.json()["detail"].startswith(detail), (method, path)


ERRORS = [
    ("GET", "/instances/999", None, 404, "unknown instance 999"),
    ("GET", "/instances/999/tasks", None, 404, "unknown instance 999"),
    ("GET", "/tasks/999", None, 404, "unknown task 999"),
    ("GET", "/tasks/999/subtasks", None, 404, "unknown task 999"),
    ("GET", "/tasks/999/logs", None, 404, "unknown task 999"),
    ("GET", "/tasks/{task}/logs?subtask=7", None, 404, "task {task} has no subtask 7"),
    (
        "GET",
        "/tasks/{task}/logs?subtsk=0",
        None,
        422,
        "unknown query parameter 'subtsk' (accepted: subtask)",
    ),
    ("GET", "/instances/one", None, 422, "path.instance_id: Input should be a valid integer"),
    ("GET", "/tasks/0", None, 422, "path.task_id: Input should be greater than or equal to 1"),
    (
        "POST",
        "/instances",
        {"pipeline": "nosuch"},
        404,
        "unknown pipeline 'nosuch' (known: sample)",
    ),
    (
        "POST",
        "/instances",
        {"pipeline": "sample", "start_node": "nosuch"},
        404,
        "pipeline 'sample' has no node 'nosuch'",
    ),
    (
        "POST",
        "/instances",
        {"pipeline": "sample", "start_node": "averaging", "end_node": "permuter"},
        422,
        "node 'permuter' is not downstream of node 'averaging'",
    ),
    (
        "POST",
        "/instances",
        {"pipeline": "sample", "priority": 12},
        422,
        "body.priority: Input should be less than or equal to 9",
    ),
    ("POST", "/instances", {}, 422, "body.pipeline: Field required"),
    ("POST", "/instances", "{not json", 422, "body is not valid JSON"),
    (
        "POST",
        "/tasks/restart",
        {"tasks": [{"task_id": 999, "mode": "resubmit"}]},
        404,
        "unknown task 999",
    ),
    (
        "POST",
        "/tasks/restart",
        {"tasks": [{"task_id": "{task}", "mode": "resubmit"}]},
        409,
        "task {task} is complete without failures: only failed tasks can be restarted",
    ),
    (
        "POST",
        "/tasks/restart",
        {"tasks": [{"task_id": "{task}", "mode": "again"}]},
        422,
        "body.tasks.0.mode: Input should be 'restart-from-beginning', 'resubmit',",
    ),
    ("POST", "/tasks/restart", {"tasks": []}, 422, "body.tasks: List should have at least 1"),
    (
        "POST",
        "/tasks/restart",
        {"tasks": [{"task_id": "{task}", "mode": "resubmit"}], "execution": {"priority": 10}},
        422,
        "body.execution.priority: Input should be less than or equal to 9",
    ),
    (
        "POST",
        "/tasks/restart",
        {"tasks": [{"task_id": "{task}", "mode": "resubmit"}], "execution": {"color": "red"}},
        422,
        "unknown execution setting 'color'",
    ),
    ("POST", "/instances/999/restart-failed", {"mode": "resubmit"}, 404, "unknown instance 999"),
    (
        "POST",
        "/instances/{instance}/restart-failed",
        {"mode": "resubmit"},
        409,
        "instance {instance} has no failed tasks",
    ),
    ("POST", "/tasks/999/halt", None, 404, "unknown task 999"),
    ("POST", "/tasks/{task}/halt", None, 409, "task {task} is complete: nothing to halt"),
    ("POST", "/instances/999/halt", None, 404, "unknown instance 999"),
    ("POST", "/instances/{instance}/halt", None, 409, "instance {instance} has no running tasks"),
    ("POST", "/alerts/999/ack", None, 404, "unknown alert 999"),
    ("DELETE", "/instances/{instance}", None, 405, "Method Not Allowed"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "detail"), ERRORS)
def test_bad_requests_name_the_problem_and_change_nothing(
    api: Api, completed: dict[str, Any], method: str, path: str, body: Any, status: int, detail: str
) -> None:
    names = {"instance": completed["id"], "task": completed["tasks"][0]}
    if isinstance(body, dict):  # "{task}" in a body stands for the completed task's id
        body = json.loads(json.dumps(body).replace('"{task}"', str(names["task"])))
    before = api.http.get("/instances").json(), api.http.get("/parameter-sets").json()
    content = body if isinstance(body, str) else None if body is None else json.dumps(body)
    answer = api.http.request(
        method,
        path.format(**names),
        content=content,
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    [line] = answer.json()["detail"].splitlines()
    assert line.startswith(detail.format(**names)), line
    assert (api.http.get("/instances").json(), api.http.get("/parameter-sets").json()) == before


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


# -- schema fuzzing: last, since it may restart or halt whatever ids it guesses ---------------


def test_schema_fuzzing_finds_no_server_error_and_no_answer_off_the_schema(api: Api) -> None:
    """Schemathesis on the live schema, valid and invalid requests, a few examples each."""
    schema = schemathesis.openapi.from_url(f"{api.url}{API_PREFIX}/openapi.json", headers=api.auth)
    schema.config.update(headers={"Authorization": f"Bearer {api.token}"})
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 16
    for operation in operations:
        inputs = (operation.path_parameters, operation.query, operation.body)
        modes = list(GenerationMode) if any(map(len, inputs)) else [GenerationMode.POSITIVE]
        for mode in modes:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=FUZZ_EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def call(case: schemathesis.Case) -> None:
                case.call_and_validate()

            call()
