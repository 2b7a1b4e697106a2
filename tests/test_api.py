"""The HTTP API, its app driven in this process over a home of the test's own: the same JSON
as the CLI, restarts, every route behind the token, one-line errors that change nothing,
and the schema fuzzed. (The API process that `cluster start` runs is in
``test_api_cluster.py``.)"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pipeline.domain.listing import TOTAL_HEADER
from pipeline.interfaces.api import MAX_BODY_BYTES, create_app
from pipeline.settings import API_PREFIX, HEALTHZ
from tests.support import InProcessWorker, free_port, point_here, run_cli

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: Hypothesis examples per API operation in the schema fuzzing: bounded to keep it quick.
FUZZ_EXAMPLES = 6


@functools.cache
def app() -> FastAPI:
    """The API app: made once, since it reads the home from the settings at each request."""
    return create_app(TOKEN)


@pytest.fixture
def http() -> Iterator[TestClient]:
    """The API app over the home this test points at, called with the token. Entered, the
    client keeps one event loop for every request (not one per request: 30 ms each)."""
    with TestClient(app(), base_url=f"http://api{API_PREFIX}", headers=AUTH) as client:
        yield client


@pytest.fixture
def submitted(home: Path, http: TestClient, worker: InProcessWorker) -> dict[str, Any]:
    """An instance of the sample submitted over HTTP and run to COMPLETED."""
    response = http.post("/instances", json={"pipeline": "sample", "end_node": "permuter"})
    assert response.status_code == 201, response.text
    worker.drain()
    return {**response.json(), "location": response.headers["location"]}


def test_an_instance_submitted_over_http_completes(http: TestClient, submitted: dict) -> None:
    instance = submitted["id"]
    assert submitted["location"] == f"{API_PREFIX}/instances/{instance}"
    assert submitted["pipeline"] == "sample" and len(submitted["tasks"]) == 2
    assert submitted["state"] == "INITIALIZED"

    detail = http.get(f"/instances/{instance}").json()
    assert (detail["state"], detail["end_node"]) == ("COMPLETED", "permuter")
    assert detail["nodes"] == {"permuter": "DONE"}
    assert (detail["tasks"], detail["completed_subtasks"], detail["failed_subtasks"]) == (2, 8, 0)
    tasks = http.get(f"/instances/{instance}/tasks").json()
    assert [(t["node"], t["state"], t["counts"]) for t in tasks] == [
        ("permuter", "COMPLETE", "4/4 (0)"),
        ("permuter", "COMPLETE", "4/4 (0)"),
    ]
    [log] = http.get(f"/tasks/{tasks[0]['id']}/logs", params={"subtask": 2}).json()
    assert "permuter: subtask 2 of set-1" in log["text"]


def test_a_dry_run_over_http_says_every_node_s_tasks_and_submits_nothing(
    home: Path, http: TestClient, worker: InProcessWorker
) -> None:
    body = {"pipeline": "sample", "units": "set-.*", "exclude": "set-1", "dry_run": True}
    answer = http.post("/instances", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["tasks"] == {
        "permuter": [{"unit_of_work": "set-2", "subtasks": 4}],
        "flip": [{"unit_of_work": "set-2", "subtasks": None}],
        "averaging": [{"unit_of_work": "set-2", "subtasks": None}],
    }
    assert http.get("/instances").json() == []
    submitted = http.post("/instances", json={**body, "dry_run": False})
    assert submitted.status_code == 201, submitted.text
    assert (submitted.json()["units_regexp"], submitted.json()["units_exclude"]) == (
        "set-.*",
        "set-1",
    )


def test_the_api_answers_the_same_json_as_the_cli(
    http: TestClient, completed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    instance, task = 1, 1
    for path, command in [
        (f"/instances/{instance}/tasks", ["tasks", instance]),
        (f"/tasks/{task}", ["task", task]),
        (f"/tasks/{task}/subtasks", ["subtasks", task]),
        (f"/tasks/{task}/logs", ["logs", task]),
        ("/pipelines", ["definitions", "list"]),
        ("/parameter-sets", ["params", "list"]),
        ("/alerts", ["alerts"]),
        ("/instances", ["instances"]),
        ("/files?instance=1&unit=set-2", ["files", "--instance", 1, "--unit", "set-2"]),
        ("/lineage?path=set-1/L3/averaged-image.png", ["lineage", "set-1/L3/averaged-image.png"]),
    ]:
        printed = json.loads(run_cli(capsys, *command, "--json").stdout)
        assert http.get(path).json() == printed, path


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/instances", "InstanceView"),
        ("/instances/1/tasks", "TaskView"),
        ("/tasks/1/subtasks", "ListedSubtask"),
    ],
)
def test_a_listing_answers_its_models_rows_and_how_many_in_all(
    http: TestClient, completed: Path, path: str, model: str
) -> None:
    """Listings are answered as the queries list them (10,000 tasks are not validated one by
    one at every request): each row is exactly what its view makes of it, no field more."""
    from pydantic import TypeAdapter

    from pipeline.operations import views

    http.post("/instances", json={"pipeline": "sample"})  # a second, newer instance
    response = http.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    rows = response.json()
    assert rows, path
    shape = TypeAdapter(list[getattr(views, model)])
    as_modelled = shape.dump_python(shape.validate_python(rows), mode="json")
    # Compared as text: to a client 3600 is not 3600.0, nor 1 true.
    assert json.dumps(as_modelled, sort_keys=True) == json.dumps(rows, sort_keys=True)
    assert int(response.headers[TOTAL_HEADER]) == len(rows)
    limited = http.get(path, params={"limit": 1})
    first = rows[-1:] if path == "/instances" else rows[:1]  # the newest instance, else the first
    assert (limited.json(), limited.headers[TOTAL_HEADER]) == (first, str(len(rows)))


#: A task's execution settings as stored before ``batch_size`` and ``require_outputs`` existed.
OLDER_EXECUTION = (
    '{"queue": "default", "subtask_timeout": 3600.0, "max_failed_subtasks": 0,'
    ' "max_auto_resubmits": 0, "priority": 5}'
)


def test_a_task_stored_before_newer_execution_settings_lists_them_at_their_defaults(
    http: TestClient, completed: Path
) -> None:
    """A task row written before an execution setting existed (its migration adds no value
    to stored tasks) shows it at its default in the listing, as in the task's detail."""
    from sqlalchemy import text

    from pipeline.database import transaction

    with transaction() as session:
        session.execute(
            text("UPDATE tasks SET execution = :e WHERE id = 1"), {"e": OLDER_EXECUTION}
        )
    detail = http.get("/tasks/1").json()
    [listed] = [task for task in http.get("/instances/1/tasks").json() if task["id"] == 1]
    assert listed["execution"] == detail["execution"]
    assert (listed["execution"]["batch_size"], listed["execution"]["require_outputs"]) == (
        None,
        False,
    )


def test_a_failed_task_restarted_over_http(
    failed: Path, http: TestClient, worker: InProcessWorker
) -> None:
    instance = 1
    stopped = http.get(f"/instances/{instance}/tasks").json()
    assert {(t["state"], t["counts"]) for t in stopped} == {
        ("ERROR - ALGORITHM_COMPLETE", "3/4 (1)")
    }

    refused = http.post(
        "/tasks/restart",
        json={
            "tasks": [{"task_id": stopped[0]["id"], "mode": "resume-current-step"}],
            "execution": {"throw_exception_subtask_0": False},
        },
    )
    assert refused.status_code == 409
    assert "throw_exception_subtask_0 is an algorithm parameter" in refused.json()["detail"]
    dry = http.post(
        f"/instances/{instance}/restart-failed",
        json={"mode": "resume-current-step", "dry_run": True},
    ).json()
    assert [(o["task_id"], o["ok"], o["start_from"]) for o in dry] == [
        (t["id"], True, "STORING") for t in stopped
    ]
    assert http.get(f"/instances/{instance}/tasks").json() == stopped, "nothing changed"

    tasks = [{"task_id": t["id"], "mode": "resume-current-step"} for t in stopped]
    outcomes = http.post("/tasks/restart", json={"tasks": tasks}).json()
    assert all(o["ok"] and o["start_from"] == "STORING" for o in outcomes)
    worker.drain()
    assert http.get(f"/instances/{instance}").json()["state"] == "COMPLETED"
    history = [e["message"] for e in http.get(f"/tasks/{stopped[0]['id']}").json()["history"]]
    assert "restart: resume-current-step" in history


def test_every_route_but_healthz_needs_the_token(home: Path, http: TestClient) -> None:
    schema = http.get("/openapi.json").json()
    operations = [
        (method.upper(), path)
        for path, methods in schema["paths"].items()
        for method in methods
        if not path.endswith(HEALTHZ)
    ]
    # The schema itself, an unknown path and a malformed body: 401 first, nothing else.
    operations += [
        ("GET", f"{API_PREFIX}/openapi.json"),
        ("GET", f"{API_PREFIX}/docs"),
        ("GET", "/nowhere"),
    ]
    assert {
        ("POST", f"{API_PREFIX}/instances"),
        ("GET", f"{API_PREFIX}/tasks/{{task_id}}/logs"),
        ("POST", f"{API_PREFIX}/tasks/restart"),
        ("POST", f"{API_PREFIX}/alerts/{{alert_id}}/ack"),
    } <= set(operations), "the schema lists the routes"
    anonymous = TestClient(app(), base_url="http://api")
    malformed = anonymous.post(
        f"{API_PREFIX}/instances",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert malformed.status_code == 401
    for method, path in operations:
        url = re.sub(r"\{[^}]+\}", "1", path)
        for headers, detail in [
            ({}, "missing bearer token"),
            ({"Authorization": "Basic b3BlcmF0b3I6cGFzcw=="}, "missing bearer token"),
            ({"Authorization": f"Bearer {TOKEN}x"}, "wrong bearer token"),
            ({"Authorization": "Bearer"}, "missing bearer token"),
        ]:
            answer = anonymous.request(method, url, headers=headers, json={})
            assert answer.status_code == 401, (method, path, headers)
            assert answer.headers["www-authenticate"] == "Bearer"
            assert answer.json()["detail"].startswith(detail), (method, path)
    assert anonymous.get(f"{API_PREFIX}{HEALTHZ}").json() == {
        "status": "ok",
        "reconciler_running": False,
        "reconciler": "reconciler has not run yet: is beat running?",
    }


ERRORS = [
    ("GET", "/instances/999", None, 404, "unknown instance 999"),
    ("GET", "/instances/999/tasks", None, 404, "unknown instance 999"),
    ("GET", "/tasks/999", None, 404, "unknown task 999"),
    ("GET", "/tasks/999/subtasks", None, 404, "unknown task 999"),
    ("GET", "/tasks/999/logs", None, 404, "unknown task 999"),
    ("GET", "/tasks/{task}/logs?subtask=7", None, 404, "task {task} has no subtask 7"),
    ("GET", "/tasks/{task}/logs?subtsk=0", None, 422, "unknown query parameter 'subtsk' (accepted: subtask)"),
    ("GET", "/instances/one", None, 422, "path.instance_id: Input should be a valid integer"),
    ("GET", "/tasks/0", None, 422, "path.task_id: Input should be greater than or equal to 1"),
    ("POST", "/instances", {"pipeline": "nosuch"}, 404, "unknown pipeline 'nosuch' (known: sample)"),
    ("POST", "/instances", {"pipeline": "sample", "start_node": "nosuch"}, 404, "pipeline 'sample' has no node 'nosuch'"),
    ("POST", "/instances", {"pipeline": "sample", "start_node": "averaging", "end_node": "permuter"}, 422, "node 'permuter' is not downstream of node 'averaging'"),
    ("POST", "/instances", {"pipeline": "sample", "priority": 12}, 422, "body.priority: Input should be less than or equal to 9"),
    ("POST", "/instances", {}, 422, "body.pipeline: Field required"),
    ("POST", "/instances", "{not json", 422, "body is not valid JSON"),
    ("POST", "/tasks/restart", {"tasks": [{"task_id": 999, "mode": "resubmit"}]}, 404, "unknown task 999"),
    ("POST", "/tasks/restart", {"tasks": [{"task_id": "{task}", "mode": "resubmit"}]}, 409, "task {task} is complete without failures: only failed tasks can be restarted"),
    ("POST", "/tasks/restart", {"tasks": [{"task_id": "{task}", "mode": "again"}]}, 422, "body.tasks.0.mode: Input should be 'restart-from-beginning', 'resubmit',"),
    ("POST", "/tasks/restart", {"tasks": []}, 422, "body.tasks: List should have at least 1"),
    ("POST", "/tasks/restart", {"tasks": [{"task_id": "{task}", "mode": "resubmit"}], "execution": {"priority": 10}}, 422, "body.execution.priority: Input should be less than or equal to 9"),
    ("POST", "/tasks/restart", {"tasks": [{"task_id": "{task}", "mode": "resubmit"}], "execution": {"color": "red"}}, 422, "unknown execution setting 'color'"),
    ("POST", "/tasks/restart", {"tasks": [{"task_id": "{task}", "mode": "resubmit"}], "execution": {"subtask_timeout": float("inf")}}, 422, "body.execution.subtask_timeout: Input should be a finite number"),
    ("POST", "/tasks/restart", {"tasks": [{"task_id": "{task}", "mode": "resubmit"}], "execution": {"subtask_timeout": float("nan")}}, 422, "body.execution.subtask_timeout: Input should be a finite number"),
    ("POST", "/tasks/restart", '{"tasks": [{"task_id": 1, "mode": "resubmit"}], "execution": {"subtask_timeout": 1e400}}', 422, "body.execution.subtask_timeout: Input should be a finite number"),
    ("POST", "/tasks/restart", {"tasks": [{"task_id": "{task}", "mode": "resubmit"}], "execution": {"max_failed_subtasks": 2**63}}, 422, "body.execution.max_failed_subtasks: Input should be less than or equal to 2147483647"),
    ("POST", "/tasks/restart", {"tasks": [{"task_id": "{task}", "mode": "resubmit"}], "execution": {"priority": True}}, 422, "body.execution.priority: Value error, true and false are not numbers"),
    ("POST", "/tasks/restart", {"tasks": [{"task_id": "{task}", "mode": "resubmit"}], "execution": {"subtask_timeout": True}}, 422, "body.execution.subtask_timeout: Value error, true and false are not numbers"),
    ("POST", "/tasks/restart", {"tasks": [{"task_id": True, "mode": "resubmit"}]}, 422, "body.tasks.0.task_id: Value error, true and false are not numbers"),
    ("POST", "/instances", {"pipeline": "sample", "priority": True}, 422, "body.priority: Value error, true and false are not numbers"),
    ("POST", "/instances", {"pipeline": "sample", "execution": {"nosuch": {"priority": 1}}}, 404, "execution settings: pipeline 'sample' has no node 'nosuch'"),
    ("POST", "/instances", {"pipeline": "sample", "execution": {"permuter": {"color": "red"}}}, 422, "unknown execution setting 'color'"),
    ("POST", "/instances", {"pipeline": "sample", "execution": {"permuter": {"executor": "slurm", "batch.environment": "nowhere"}}}, 404, "no remote environment 'nowhere' in any imported pipeline"),
    ("POST", "/instances", {"pipeline": "sample", "execution": {"permuter": {"batch.queue": "long"}}}, 422, "batch.queue 'long': a remote environment's queue; name the environment too"),
    ("POST", "/tasks/restart", {"tasks": [{"task_id": "{task}", "mode": "resubmit"}], "execution": {"batch": {"environment": "nowhere"}}}, 404, "no remote environment 'nowhere' in any imported pipeline"),
    ("POST", "/tasks/restart", {"tasks": [{"task_id": "{task}", "mode": "resubmit"}], "execution": {"batch.environment": "nowhere"}}, 404, "no remote environment 'nowhere' in any imported pipeline"),
    ("POST", "/instances/{instance}/restart-failed", {"mode": "resubmit", "execution": {"subtask_timeout": -1e400}}, 422, "body.execution.subtask_timeout: Input should be a finite number"),
    ("POST", "/instances/999/restart-failed", {"mode": "resubmit"}, 404, "unknown instance 999"),
    ("POST", "/instances/{instance}/restart-failed", {"mode": "resubmit"}, 409, "instance {instance} has no failed tasks"),
    ("POST", "/tasks/999/halt", None, 404, "unknown task 999"),
    ("POST", "/tasks/{task}/halt", None, 409, "task {task} is complete: nothing to halt"),
    ("POST", "/instances/999/halt", None, 404, "unknown instance 999"),
    ("POST", "/instances/{instance}/halt", None, 409, "instance {instance} has no running tasks"),
    ("POST", "/alerts/999/ack", None, 404, "unknown alert 999"),
    ("DELETE", "/instances/{instance}", None, 405, "Method Not Allowed"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "status", "detail"), ERRORS)
def test_bad_requests_name_the_problem_and_change_nothing(
    untouched: Path, http: TestClient, method: str, path: str, body: Any, status: int, detail: str
) -> None:
    names = {"instance": 1, "task": 1}
    if isinstance(body, dict):  # "{task}" in a body stands for the completed task's id
        body = json.loads(json.dumps(body).replace('"{task}"', str(names["task"])))
    before = http.get("/instances").json(), http.get("/parameter-sets").json()
    content = body if isinstance(body, str) else None if body is None else json.dumps(body)
    answer = http.request(
        method,
        path.format(**names),
        content=content,
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    [line] = answer.json()["detail"].splitlines()
    assert line.startswith(detail.format(**names)), line
    assert (http.get("/instances").json(), http.get("/parameter-sets").json()) == before


#: An input far longer than any answer may quote (under the body limit, so it is read; a
#: URL holds a tenth of it).
LONG = "x" * 500_000


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/instances", {"pipeline": LONG}, 422),
        ("POST", "/instances", {"pipeline": "sample", "start_node": LONG}, 422),
        ("GET", f"/instances?{LONG[:50_000]}=1", None, 422),
        ("POST", "/tasks/restart", {"tasks": [{"task_id": 1, "mode": LONG}]}, 422),
        ("POST", "/tasks/restart", {"tasks": [{"task_id": 1, "mode": "resubmit"}], "execution": {LONG: 1}}, 422),
        ("POST", "/tasks/restart", {"tasks": [{"task_id": 1, "mode": "resubmit"}], "execution": {"queue": LONG}}, 422),
        ("GET", f"/tasks/{LONG[:50_000]}", None, 422),
        ("POST", "/instances", LONG, 422),
        ("POST", "/instances", {"pipeline": "x" * 10_000_000}, 413),
    ],
)  # fmt: skip
def test_an_answer_quotes_no_more_than_a_short_prefix_of_its_input(
    completed: Path, http: TestClient, method: str, path: str, body: Any, status: int
) -> None:
    content = body if isinstance(body, str) else None if body is None else json.dumps(body)
    answer = http.request(
        method, path, content=content, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == status, answer.text[:300]
    [line] = answer.json()["detail"].splitlines()
    assert len(line) < 400, line[:400]


def test_too_many_tasks_in_one_request_is_refused_with_the_limit(
    completed: Path, http: TestClient
) -> None:
    tasks = [{"task_id": 1, "mode": "resubmit"}]
    answer = http.post("/tasks/restart", json={"tasks": tasks * 10_001})
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith("body.tasks: List should have at most 10000 items")
    answer = http.post("/tasks/restart", json={"tasks": tasks * 250_001})
    assert answer.status_code == 413
    assert answer.json()["detail"].startswith("request body of ")
    assert answer.json()["detail"].endswith(f"bytes: at most {MAX_BODY_BYTES} bytes")


def test_a_token_in_the_query_string_is_never_logged(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The API's access log shows the path, never the query string: a token sent there
    (refused, since it goes in the header) does not reach the log."""
    import threading

    import httpx
    import uvicorn

    from pipeline.interfaces.api import server_config
    from tests.support import wait_for

    port = free_port()
    server = uvicorn.Server(server_config(create_app(TOKEN), "127.0.0.1", port))
    thread = threading.Thread(target=server.run, daemon=True)
    access = logging.getLogger("uvicorn.access")  # which does not propagate to the root
    access.addHandler(caplog.handler)
    with caplog.at_level("INFO", logger="uvicorn.access"):
        thread.start()
        try:
            wait_for(lambda: server.started, timeout=30, what="the API to start")
            url = f"http://127.0.0.1:{port}{API_PREFIX}/instances?token=s3cret&access_token=s3cret"
            assert httpx.get(url, timeout=10).status_code == 401
            wait_for(lambda: "/instances" in caplog.text, timeout=10, what="the access log")
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            access.removeHandler(caplog.handler)
    assert f"{API_PREFIX}/instances" in caplog.text
    assert "s3cret" not in caplog.text


@pytest.mark.parametrize(
    ("setting", "value", "call", "detail"),
    [
        ("PIPELINE_DATABASE_URL", "postgresql+psycopg://pipe:secret@127.0.0.1:{port}/db", ("GET", "/instances"), "database unreachable at postgresql+psycopg://pipe:***@127.0.0.1:{port}/db"),
        ("PIPELINE_BROKER_URL", "redis://:secret@127.0.0.1:{port}/0", ("POST", "/instances"), "broker unreachable at redis://:***@127.0.0.1:{port}"),
    ],
)  # fmt: skip
def test_an_unreachable_database_or_broker_answers_503(
    home: Path,
    http: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    setting: str,
    value: str,
    call: tuple,
    detail: str,
) -> None:
    port = free_port()
    monkeypatch.setenv(setting, value.format(port=port))
    point_here()
    method, path = call
    answer = http.request(method, path, json={"pipeline": "sample"})
    assert answer.status_code == 503, answer.text
    assert answer.json()["detail"].startswith(detail.format(port=port))
    assert "secret" not in answer.text


@pytest.mark.slow
def test_schema_fuzzing_finds_no_server_error_and_no_answer_off_the_schema(
    completed: Path, worker: InProcessWorker, http: TestClient
) -> None:
    """Schemathesis on the app's schema, valid and invalid requests, a few examples each."""
    import schemathesis  # imported here: the fast tests need not load it
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_asgi(f"{API_PREFIX}/openapi.json", http.app, headers=AUTH)
    schema.config.update(headers=AUTH)
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


def test_files_are_received_over_http_all_or_nothing(
    http: TestClient, home: Path, tmp_path: Path
) -> None:
    import hashlib

    delivery = tmp_path / "delivery"
    delivery.mkdir()
    (delivery / "a.png").write_bytes(b"first image")
    (delivery / "b.png").write_bytes(b"second image")
    manifest = delivery / "MANIFEST"
    manifest.write_text(
        "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in
                sorted(delivery.glob("*.png")))
    )  # fmt: skip
    body = {
        "directory": str(delivery),
        "data_file_type": "raw_image",
        "unit_of_work": "set-9",
        "manifest": str(manifest),
    }
    (delivery / "b.png").write_bytes(b"changed in transit")
    refused = http.post("/datastore/imports", json=body)
    assert refused.status_code == 422
    assert refused.json() == {"detail": "b.png: checksum differs from the manifest's"}
    assert http.get("/files", params={"unit": "set-9"}).json() == []

    (delivery / "b.png").write_bytes(b"second image")
    received = http.post("/datastore/imports", json=body)
    assert received.status_code == 201, received.text
    assert [f["path"] for f in received.json()["files"]] == ["set-9/L0/a.png", "set-9/L0/b.png"]
    listed = http.get("/files", params={"unit": "set-9"}).json()
    receipt = f"MANIFEST ({delivery.resolve()})"
    assert [(f["origin"], f["receipt"]) for f in listed] == [("received", receipt)] * 2
    nul = http.post("/datastore/imports", json={**body, "directory": "/tmp/a\x00b"})
    assert (nul.status_code, nul.json()["detail"]) == (
        422,
        "'/tmp/a\\x00b': a file name cannot hold a NUL character",
    )
    unknown = http.post("/datastore/imports", json={**body, "data_file_type": "nope"})
    assert (unknown.status_code, unknown.json()["detail"]) == (
        404,
        "no data file type 'nope' in any imported pipeline",
    )


#: JSON values at and past every limit a number, a flag or a string may meet.
EXTREMES = [
    "Infinity",
    "-Infinity",
    "NaN",
    "1e400",
    "-1e400",
    str(2**63),
    str(-(2**63) - 1),
    "true",
    "false",
    json.dumps("x" * 20_000),
]
#: The same in a path or a query string.
EXTREME_TEXTS = ["inf", "nan", "1e400", str(2**63), str(-(2**63) - 1), "true", "-1", "x" * 5_000]
#: A valid request body of each operation that takes one: dry runs and refusals, so that a
#: value which slipped through would show as a changed answer, never a changed home.
VALID_BODIES = {
    "/instances": {"pipeline": "sample", "end_node": "permuter", "priority": 1},
    "/instances/{instance_id}/restart-failed": {
        "mode": "resubmit",
        "execution": {"subtask_timeout": 60, "max_failed_subtasks": 1, "priority": 1},
        "dry_run": True,
    },
    "/tasks/restart": {
        "tasks": [{"task_id": 1, "mode": "resubmit"}],
        "execution": {"max_auto_resubmits": 1, "queue": "default"},
        "dry_run": True,
    },
    "/datastore/imports": {
        "directory": "/nonexistent/delivery",
        "data_file_type": "raw_image",
        "unit_of_work": "set-9",
        "manifest": None,
        "pipeline": "sample",
    },
}
#: Query parameters that take an integer.
INTEGER_QUERIES = {"subtask", "instance", "task", "limit"}


def leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of each leaf value in a JSON body (and of each key left unset as null)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from leaves(item, (*path, index))
    else:
        yield path


def with_raw(body: Any, path: tuple[Any, ...], raw: str) -> str:
    """``body`` as JSON text with the value at ``path`` replaced by the raw JSON ``raw``."""
    marker = "__EXTREME__"
    copy = json.loads(json.dumps(body))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = marker
    return json.dumps(copy).replace(json.dumps(marker), raw)


def test_every_value_at_its_limits_is_refused_in_one_line_and_changes_nothing(
    failed: Path, http: TestClient
) -> None:
    """Each field of each request body, each path id and each integer query, set in turn
    to a number past its limits (inf, nan, 1e400, 2**63), a flag for a number, or a string
    far too long: a 4xx naming it in one short line, never a 5xx, and nothing changed."""
    schema = http.app.openapi()
    before = (http.get("/instances").json(), http.get("/instances/1/tasks").json())
    operations = [
        (path.removeprefix(API_PREFIX), method, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    ]
    tried = 0
    for path, method, operation in operations:
        for parameter in operation.get("parameters", []):
            name, where = parameter["name"], parameter["in"]
            if where == "query" and name not in INTEGER_QUERIES:
                continue
            for text in EXTREME_TEXTS:
                url = path.replace(f"{{{name}}}", text) if where == "path" else path
                url = re.sub(r"\{[a-z_]+\}", "1", url)
                params = {name: text} if where == "query" else {}
                body = VALID_BODIES.get(path) if method == "post" else None
                answer = http.request(method, url, params=params, json=body)
                assert_refused(answer, f"{method} {url} {name}={text[:20]}")
                tried += 1
        if method != "post" or path not in VALID_BODIES:
            continue
        url = re.sub(r"\{[a-z_]+\}", "1", path)
        for leaf in leaves(VALID_BODIES[path]):
            for raw in EXTREMES:
                if leaf[-1] == "dry_run" and raw in ("true", "false"):
                    continue  # a flag's own values
                content = with_raw(VALID_BODIES[path], leaf, raw)
                headers = {"Content-Type": "application/json"}
                answer = http.post(url, content=content, headers=headers)
                assert_refused(answer, f"POST {url} {'.'.join(map(str, leaf))}={raw[:20]}")
                tried += 1
        too_large = http.post(url, content=b" " * (MAX_BODY_BYTES + 1), headers=headers)
        assert too_large.status_code == 413, url
    assert tried > 250
    assert (http.get("/instances").json(), http.get("/instances/1/tasks").json()) == before


def assert_refused(answer: Any, what: str) -> None:
    assert 400 <= answer.status_code < 500, f"{what}: {answer.status_code} {answer.text[:300]}"
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and len(detail) <= 1000, what


def test_the_apis_request_models_and_the_views_load_no_celery() -> None:
    """The HTTP API's schema (its requests and the operations' views) is read without the
    broker's libraries: a client or a docs build needs no Celery."""
    import subprocess
    import sys

    probe = (
        "import sys, pipeline.interfaces.api_schemas, pipeline.operations.views;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('celery', 'kombu')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert loaded.strip() == "[]"


def test_every_view_refuses_a_field_it_does_not_declare() -> None:
    """A view and what builds it cannot drift apart unnoticed: an answer with a field its
    view lacks fails validation (the API answers 500 in the tests) instead of losing it."""
    from pydantic import TypeAdapter
    from typing_extensions import is_typeddict

    from pipeline.operations import views

    found = [
        name
        for name, kind in vars(views).items()
        if is_typeddict(kind) and kind.__module__ == views.__name__
    ]
    assert len(found) > 20
    for name in found:
        schema = TypeAdapter(getattr(views, name)).json_schema()
        assert schema.get("additionalProperties") is False, name


def test_a_node_is_sent_to_a_remote_environment_for_one_instance_over_http(
    home: Path, worker: InProcessWorker, http: TestClient, tmp_path: Path
) -> None:
    from tests.test_batch import ENVIRONMENTS, batch_nodes

    with batch_nodes(tmp_path) as system:
        listed = http.get("/environments")
        assert listed.status_code == 200
        assert {e["name"]: e["implemented"] for e in listed.json()} == {
            "centre": True,
            "pbs-centre": False,
        }
        assert [a["name"] for a in listed.json()[0]["architectures"]] == sorted(
            ENVIRONMENTS["centre"]["architectures"]
        )
        onto = {"batch.environment": "centre", "batch.architecture": "big", "batch.queue": "long"}
        body = {"pipeline": "sample-batch", "end_node": "permuter", "execution": {"permuter": onto}}
        reserved = {**onto, "batch.queue": "special"}
        refused = http.post("/instances", json={**body, "execution": {"permuter": reserved}})
        assert refused.status_code == 409, refused.text
        assert refused.json()["detail"].startswith("queue 'special' of remote environment")
        submitted = http.post("/instances", json=body)
        assert submitted.status_code == 201, submitted.text
        worker.drain()
        [first, *_] = system.jobs.values()
        assert (first.request.partition, first.request.cores) == ("long", 16)
