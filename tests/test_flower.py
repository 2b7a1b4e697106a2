"""Flower: the pipeline's operations through its API, and its restart page, behind basic auth.

The cluster (with Flower, started by ``pipeline cluster start``) is shared with the other
modules of xdist group ``full-cluster``; here its sample pipeline fails subtask 0 of each
permuter task, and the instances run the permuter node only, so a failed instance comes
quickly.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from pipeline.messaging.messages import RECONCILE, SUBTASK
from pipeline.operations import facade
from tests.support import STOPPED_WITH_ERRORS, Cluster, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("full-cluster")]

CHROMIUM = Path("/usr/bin/chromium")
#: Where the browser tests save their screenshots unless PIPELINE_SCREENSHOTS says.
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "console"
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Seconds an operation run through Flower, or a page change, gets to show up.
DEADLINE = 60
#: Seconds each subtask of the halted instance sleeps: far longer than the test may take.
PAUSE = 600


@dataclass
class Answer:
    status: int
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Flower:
    """Flower's HTTP API, with or without the cluster's credentials."""

    url: str
    user: str
    password: str

    def request(
        self, path: str, data: bytes | None = None, auth: bool = True, **headers: str
    ) -> Answer:
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        if auth:
            token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return Answer(response.status, response.read().decode())
        except urllib.error.HTTPError as exc:
            return Answer(exc.code, exc.read().decode())

    def async_apply(self, name: str, *args: Any, auth: bool = True, **kwargs: Any) -> Answer:
        body = json.dumps({"args": list(args), "kwargs": kwargs}).encode()
        return self.request(
            f"/api/task/async-apply/{name}", body, auth, **{"Content-Type": "application/json"}
        )

    def run(self, name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Run an operation through Flower's API and return its result, once there is one."""
        answer = self.async_apply(name, *args, **kwargs)
        assert answer.status == 200, answer
        task_id = answer.json()["task-id"]

        def finished() -> dict[str, Any] | None:
            found = self.request(f"/api/task/result/{task_id}").json()
            return found if found["state"] in ("SUCCESS", "FAILURE") else None

        found = wait_for(finished, DEADLINE, f"the result of {name}")
        assert found["state"] == "SUCCESS", found
        return found["result"]

    def post_form(self, path: str, fields: dict[str, str], auth: bool = True) -> Answer:
        """Post a form of the restart page (following its redirect back to the page), with
        the token the console's pages give this login."""
        if auth and (token := self.form_token()):
            fields = {**fields, "_xsrf": token}
        return self.request(path, urllib.parse.urlencode(fields).encode(), auth)

    def form_token(self) -> str:
        """The token of this login's forms, from the first console page showing one
        (none for a login that sees no page)."""
        listing = self.request("/pipeline/instances").body
        ids = re.findall(r'id="instance-(\d+)"', listing)
        for path in ["/pipeline/restart", *(f"/pipeline/instances/{i}" for i in ids)]:
            if found := re.findall(r'name="_xsrf" value="([^"]+)"', self.request(path).body):
                return found[0]
        return ""  # a wrong login sees no page: its post is refused all the same


@pytest.fixture(scope="module")
def cluster(full_cluster: Cluster) -> Cluster:
    full_cluster.set_parameters(throw_exception_subtask_0=True, execution_pause_seconds=0)
    return full_cluster


@pytest.fixture(scope="module")
def flower(cluster: Cluster) -> Flower:
    found = cluster.json("cluster", "credentials")
    status = {row["name"]: row for row in cluster.json("cluster", "status")}
    assert status["flower"]["alive"] and status["flower"]["url"] == found["flower_url"]
    return Flower(found["flower_url"], found["flower_user"], found["flower_password"])


def failed_instance(cluster: Cluster) -> tuple[int, list[int]]:
    """An instance stopped with its permuter tasks at ERROR - ALGORITHM_COMPLETE, 3/4 (1)."""
    instance = cluster.submit("--end-node", "permuter")
    cluster.wait(instance, STOPPED_WITH_ERRORS)
    tasks = cluster.tasks(instance)
    assert {(t["state"], t["counts"]) for t in tasks} == {("ERROR - ALGORITHM_COMPLETE", "3/4 (1)")}
    return instance, [t["id"] for t in tasks]


def instance_state(cluster: Cluster, instance: int) -> str:
    return next(i["state"] for i in cluster.json("instances") if i["id"] == instance)


def test_api_and_pages_answer_401_without_credentials(cluster: Cluster, flower: Flower) -> None:
    before = cluster.json("instances")
    assert flower.request("/api/workers", auth=False).status == 401
    assert flower.request("/pipeline/restart", auth=False).status == 401
    form = {"instance": "1", "mode": "resubmit"}
    assert flower.post_form("/pipeline/restart", form, auth=False).status == 401
    wrong = Flower(flower.url, flower.user, "not-the-password")
    assert wrong.request("/pipeline/restart").status == 401
    assert wrong.post_form("/pipeline/halt", {"task": "1"}).status == 401
    assert flower.async_apply("pipeline.submit", "sample", auth=False).status == 401
    assert flower.request("/metrics", auth=False).status == 401
    assert flower.request("/metrics").status == 200
    assert flower.request("/healthcheck", auth=False).status == 200, "open, for readiness"
    assert flower.request("/pipeline/restart").status == 200
    assert flower.async_apply("pipeline.nosuch").status == 404
    assert cluster.json("instances") == before, "nothing was submitted"


def flower_tasks(flower: Flower, **query: str) -> dict[str, dict[str, Any]]:
    """Flower's task list (``/api/tasks``), by Celery task id."""
    return flower.request("/api/tasks?" + urllib.parse.urlencode(query)).json()


def test_flower_shows_failed_subtasks_as_failures(cluster: Cluster, flower: Flower) -> None:
    """Each failed subtask is a FAILURE in Flower with the algorithm's error, not retried;
    the successful ones SUCCESS; the pipeline's own state is what it always was."""
    instance, tasks = failed_instance(cluster)

    def subtask_messages(state: str) -> list[dict[str, Any]]:
        found = flower_tasks(flower, taskname=SUBTASK, state=state).values()
        return [t for t in found if any(t["args"].startswith(f"task={task},") for task in tasks)]

    def all_reported() -> bool:
        return len(subtask_messages("FAILURE")) == 2 and len(subtask_messages("SUCCESS")) == 6

    wait_for(all_reported, DEADLINE, "Flower to report every subtask of the failed tasks")
    for failed in subtask_messages("FAILURE"):
        assert ", subtask=0, " in failed["args"], failed
        assert "RuntimeError: subtask 0 failed on purpose" in failed["exception"], failed
        assert failed["retries"] == 0, failed
        # Flower's own task page, the console installed beside it, shows the exception and
        # its traceback (a console template named like Flower's made it answer 500).
        page = flower.request(f"/task/{failed['uuid']}")
        assert page.status == 200, page.body[-500:]
        assert "subtask 0 failed on purpose" in page.body and "Traceback" in page.body
    assert not subtask_messages("RETRY")
    assert instance_state(cluster, instance) == "ERRORS_STALLED"


def test_the_reconciler_stays_out_of_flowers_task_list(
    cluster: Cluster, flower: Flower, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beat's reconciler runs every few seconds; Flower's task list does not show it, and its
    last run is on ``/metrics`` instead."""
    started = time.time()

    def monitored_since() -> bool:
        last = facade.reconciler_health()["last_run"]
        return last is not None and datetime.fromisoformat(last).timestamp() > started

    cluster.activate(monkeypatch)
    wait_for(monitored_since, DEADLINE, "the reconciler to run")
    assert flower_tasks(flower, taskname=RECONCILE) == {}
    assert "pipeline_reconciler_last_run_age_seconds" in flower.request("/metrics").body


def test_submit_and_restart_through_flowers_api(cluster: Cluster, flower: Flower) -> None:
    submitted = flower.run("pipeline.submit", "sample", end_node="permuter")
    assert submitted["ok"] and submitted["pipeline"] == "sample" and len(submitted["tasks"]) == 2
    instance, tasks = submitted["id"], submitted["tasks"]
    # The state as read just after the submit: its marshals may have begun already.
    assert submitted["summary"] in [
        f"instance {instance} of sample submitted with 2 tasks ({state});"
        " not run: flip, averaging (not between the start and end nodes)"
        for state in ("INITIALIZED", "PROCESSING")
    ]
    cluster.wait(instance, STOPPED_WITH_ERRORS)

    restarted = flower.run("pipeline.restart", tasks, mode="resume-current-step")
    assert restarted["ok"], restarted
    assert [(o["task_id"], o["mode"], o["ok"], o["start_from"]) for o in restarted["outcomes"]] == [
        (task, "resume-current-step", True, "STORING") for task in tasks
    ]
    assert restarted["summary"].startswith(
        f"task {tasks[0]} resume-current-step: store the successful subtasks"
    )
    cluster.wait(instance)
    assert {(t["state"], t["counts"]) for t in cluster.tasks(instance)} == {("COMPLETE", "3/4 (1)")}

    # Flower's task list names the pipeline task and attempt of each stage message.
    def marshal_args() -> set[str]:
        found = flower.request("/api/tasks?taskname=pipeline.stage.marshal").json()
        return {task["args"] for task in found.values()}

    expected = {f"task={task}, attempt=1" for task in tasks}
    wait_for(lambda: expected <= marshal_args(), DEADLINE, "the stage arguments in Flower")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, driven by Playwright. One that is missing or cannot start fails
    the browser tests rather than skipping them: they are the proof the console works."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        except Exception as exc:
            pytest.fail(f"Chromium cannot start: {str(exc).splitlines()[0]}")
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def screenshots() -> Path:
    """Where the browser tests save a screenshot of each page (docs/operator-guide.md: Console)."""
    found = Path(os.environ.get("PIPELINE_SCREENSHOTS", SCREENSHOTS))
    found.mkdir(parents=True, exist_ok=True)
    return found


def restart_from_the_task_page(
    page: Any, cluster: Cluster, task: int, shot: Callable[[str], None] | None
) -> None:
    """On the failed task's page: its failed subtask, subtask 0's log, then
    resume-current-step previewed and applied (each page photographed by ``shot``)."""
    from playwright.sync_api import expect

    assert page.locator("#task-counts").inner_text() == "3/4 (1)"
    page.get_by_label("State").select_option("FAILED")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**state=FAILED")
    expect(page.locator("#subtasks tbody tr")).to_have_count(1)
    if shot:
        shot("task")
    page.get_by_role("link", name="Log of subtask 0").click()
    page.wait_for_url("**/subtasks/0/log")
    assert "subtask 0 failed on purpose" in page.locator("#log").inner_text()
    if shot:
        shot("log")
    page.go_back()
    page.wait_for_url("**state=FAILED")

    # Keyboard: the restart form's controls are labelled and reached in order by Tab.
    mode = page.get_by_label("Restart mode")
    mode.focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "setting-queue"
    mode.select_option("resume-current-step")
    page.get_by_role("button", name="Preview restart").click()
    assert "store the successful subtasks" in page.locator("#preview").inner_text()
    assert cluster.json("task", task)["error"], "a preview changes nothing"
    if shot:
        shot("preview")
    page.get_by_role("button", name="Confirm restart").click()
    assert f"task {task} resume-current-step" in page.locator("#result").inner_text()


def test_the_seed_scenario_from_the_console(
    cluster: Cluster, flower: Flower, browser: Any, screenshots: Path
) -> None:
    """A newcomer's run of the seed from the browser alone: throw_exception_subtask_0 set
    on the Parameters page, the sample submitted from the Submit page (a dry run first),
    found failing on Instances, its failed task opened, subtask 0's log read and Flower's
    own page of its failed Celery task, resume-current-step previewed then applied, the
    instance COMPLETED. No CLI, no API."""
    cluster.set_parameters(throw_exception_subtask_0=False)  # the browser sets it back
    credentials = {"username": flower.user, "password": flower.password}
    context = browser.new_context(
        http_credentials=credentials, viewport={"width": 1200, "height": 800}
    )
    try:
        page = context.new_page()

        def shot(name: str) -> None:
            page.screenshot(path=str(screenshots / f"{name}.png"), full_page=False)

        page.goto(flower.url + "/workers")
        page.get_by_role("link", name="Parameters", exact=True).click()
        page.locator("#value-throw_exception_subtask_0").fill("true")
        page.get_by_role("button", name="Preview changes").click()
        page.locator("#confirm-parameters").wait_for()
        assert "throw_exception_subtask_0" in page.locator("#parameter-changes").inner_text()
        shot("parameters-edit")
        page.locator("#confirm-parameters").click()
        assert "throw_exception_subtask_0 = true" in page.locator("#result").inner_text()

        page.get_by_role("link", name="Submit", exact=True).click()
        # The cluster holds other tests' pipelines too: choose the sample first.
        page.locator("#pipeline").select_option("sample")
        page.get_by_role("button", name="Choose").click()
        page.wait_for_url(f"{flower.url}/pipeline/submit?pipeline=sample")
        page.locator("#end-node").select_option("permuter")
        page.get_by_role("button", name="Preview").click()
        page.locator("#confirm-submit").wait_for()
        assert "Nodes, in order: permuter." in page.locator("#preview").inner_text()
        shot("submit")
        page.locator("#confirm-submit").click()
        page.wait_for_url(f"{flower.url}/pipeline/instances/*")
        instance = int(page.url.split("/pipeline/instances/")[1].split("?")[0])
        tasks = [t["id"] for t in cluster.tasks(instance)]
        assert "submitted with 2 tasks" in page.locator("#result").inner_text()

        page.goto(flower.url + "/workers")
        page.get_by_role("link", name="Pipeline", exact=True).click()
        page.wait_for_url(flower.url + "/pipeline/instances")
        row = page.locator(f"#instance-{instance}")

        def stalled() -> bool:
            page.reload()
            return row.locator(".instance-state").inner_text() == "ERRORS_STALLED"

        wait_for(stalled, DEADLINE, "Instances to show the instance ERRORS_STALLED")
        assert "6 / 2 / 8" in row.inner_text(), "completed / failed / total subtasks"
        shot("instances")

        row.get_by_role("link", name=str(instance), exact=True).click()
        page.wait_for_url(f"{flower.url}/pipeline/instances/{instance}")
        node = page.locator('.dag-node[data-node="permuter"]')
        assert node.get_attribute("data-state") == "error"
        assert page.locator(f"#task-{tasks[0]} .task-state").inner_text() == (
            "ERROR - ALGORITHM_COMPLETE"
        )
        shot("instance")

        for task in tasks:
            page.goto(f"{flower.url}/pipeline/instances/{instance}")
            page.get_by_role("link", name=str(task), exact=True).click()
            page.wait_for_url(f"{flower.url}/pipeline/tasks/{task}")
            restart_from_the_task_page(page, cluster, task, shot if task == tasks[0] else None)

        # Flower's own page of the failed subtask's Celery task: its exception, its traceback.
        failed = wait_for(
            lambda: [
                t
                for t in flower_tasks(flower, taskname=SUBTASK, state="FAILURE").values()
                if t["args"].startswith(f"task={tasks[0]},")
            ],
            DEADLINE,
            "Flower to know the failed subtask",
        )
        page.goto(f"{flower.url}/task/{failed[0]['uuid']}")
        assert "subtask 0 failed on purpose" in page.content()
        shot("flower-task")

        page.goto(f"{flower.url}/pipeline/instances/{instance}")

        def completed() -> bool:
            page.reload()
            return page.locator("#instance-state").inner_text() == "COMPLETED"

        wait_for(completed, DEADLINE, "the instance page to show COMPLETED")
        assert node.get_attribute("data-state") == "complete"
        shot("instance-completed")
        for name in ("alerts", "definitions", "parameters"):
            page.goto(f"{flower.url}/pipeline/{name}")
            assert page.locator("#problem").count() == 0
            shot(name)
        assert instance_state(cluster, instance) == "COMPLETED"
    finally:
        context.close()


def test_restart_page_in_a_browser(cluster: Cluster, flower: Flower, browser: Any) -> None:
    instance, tasks = failed_instance(cluster)
    credentials = {"username": flower.user, "password": flower.password}
    context = browser.new_context(http_credentials=credentials)
    try:
        page = context.new_page()
        page.goto(flower.url + "/workers")
        page.get_by_role("link", name="Restart", exact=True).click()
        assert page.url == flower.url + "/pipeline/restart"
        section = page.locator(f"#instance-{instance}")
        assert section.locator(".instance-state").inner_text() == "ERRORS_STALLED"
        modes = [mode.name for mode in facade.restart_modes()]
        for task in tasks:
            row = section.locator(f"#task-{task}")
            choices = row.get_by_label(f"Restart mode for task {task}").locator("option")
            assert choices.all_inner_texts() == ["leave as it is", *modes]
            assert row.locator(".task-state").inner_text() == "ERROR - ALGORITHM_COMPLETE"
            assert row.locator(".task-counts").inner_text() == "3/4 (1)"
            assert "subtask 0: RuntimeError: subtask 0 failed on purpose" in row.inner_text()
            row.get_by_label(f"Restart mode for task {task}").select_option("resume-current-step")
        # A dry run first: nothing restarts until it is confirmed.
        section.get_by_role("button", name="Preview restart of the chosen tasks").click()
        page.locator("#confirm-restart").wait_for()
        assert page.locator("#preview .preview-outcome").count() == len(tasks)
        assert instance_state(cluster, instance) == "ERRORS_STALLED"
        page.locator("#confirm-restart").click()
        result = page.locator("#result").inner_text()
        assert f"task {tasks[0]} resume-current-step: store the successful subtasks" in result

        def completed() -> bool:
            page.reload()
            return section.locator(".instance-state").inner_text() == "COMPLETED"

        wait_for(completed, DEADLINE, "the restart page to show the instance COMPLETED")
        assert instance_state(cluster, instance) == "COMPLETED"
    finally:
        context.close()


def test_halt_through_flowers_api_and_the_restart_page(cluster: Cluster, flower: Flower) -> None:
    """Halted while their subtasks sleep and fill every slot of the pipeline's worker: the
    operations worker halts them all the same. The last test (later instances would sleep)."""
    cluster.set_parameters(execution_pause_seconds=PAUSE)
    instance = cluster.submit("--end-node", "permuter")

    def running() -> list[int]:
        """The instance's two tasks, one with subtasks running first, once there is one."""
        tasks = [cluster.json("task", task["id"]) for task in cluster.tasks(instance)]
        busy = [task["id"] for task in tasks if task["running"]]
        idle = [task["id"] for task in tasks if not task["running"]]
        return busy[:1] + (busy[1:] + idle) if busy and len(tasks) == 2 else []

    first, second = wait_for(running, DEADLINE, "a subtask to run")
    page = flower.request(f"/pipeline/tasks/{second}").body
    assert 'id="halt-task"' in page, "a halt button on a running task's page"

    halted = flower.run("pipeline.halt", [first])
    [outcome] = halted["outcomes"]
    assert halted["ok"] and (outcome["task_id"], outcome["mode"]) == (first, "halt"), halted
    assert halted["summary"] == f"task {first} halt: halted at ALGORITHM_EXECUTING"
    assert outcome["subtasks"], "its running subtasks were revoked"

    answer = flower.post_form("/pipeline/halt", {"task": str(second)})
    # Halted wherever the second task had got to (still marshaling on a busy machine).
    assert answer.status == 200 and f"task {second} halt: halted at " in answer.body
    for task in (first, second):
        detail = cluster.json("task", task)
        assert detail["error"] and detail["halted"] and not detail["running"], detail
        assert detail["error_message"] == "halted by operator"
    assert instance_state(cluster, instance) == "ERRORS_STALLED"
