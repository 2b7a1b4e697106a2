"""The pipeline console's pages, served by a real Flower (its Tornado app, its basic auth)
in this test's process over a home whose instance 1 failed on purpose; the work a
restart calls for is run by the in-process worker. The browser test is in test_flower."""

from __future__ import annotations

import base64
import html
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from pipeline.database import transaction
from pipeline.domain.models import Subtask
from pipeline.operations import facade, queries
from tests.support import InProcessWorker, free_port, point_here

PASSWORD = "console-test-password"
#: The permuter tasks of the failed home's instance 1.
TASKS = (1, 2)


@dataclass
class Answer:
    status: int
    body: str
    headers: dict[str, str]


@dataclass
class Console:
    url: str
    #: The Flower app serving it (its event state, fed by the tests).
    app: Any = None

    def request(
        self,
        path: str,
        fields: dict[str, str] | None = None,
        auth: bool = True,
        token: bool = True,
        **headers: str,
    ) -> Answer:
        """GET ``path``, or POST ``fields`` to it with the form token a page of the console
        gives this login (unless ``token`` is false or the fields carry one)."""
        if fields is not None and token and auth and "_xsrf" not in fields:
            fields = {**fields, "_xsrf": self.form_token()}
        data = urllib.parse.urlencode(fields).encode() if fields is not None else None
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        if auth:
            token = base64.b64encode(f"operator:{PASSWORD}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return Answer(response.status, response.read().decode(), dict(response.headers))
        except urllib.error.HTTPError as exc:
            return Answer(exc.code, exc.read().decode(), dict(exc.headers))

    def form_token(self) -> str:
        """The token of the first page showing a form (each shows the same one)."""
        for path in ("/pipeline/restart", "/pipeline/instances/1", "/pipeline/tasks/1"):
            if found := re.findall(r'name="_xsrf" value="([^"]+)"', self.request(path).body):
                return found[0]
        raise AssertionError("no page shows a form")


@pytest.fixture
def console(failed: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Console]:
    """Flower with the console on a free port, in a thread of its own."""
    port = free_port()
    monkeypatch.setenv("PIPELINE_FLOWER_PASSWORD", PASSWORD)
    monkeypatch.setenv("PIPELINE_FLOWER_PORT", str(port))
    point_here()
    from pipeline.interfaces import flower
    from pipeline.settings import get_settings

    made: list[Any] = []
    with flower.in_thread(get_settings(), made) as url:
        yield Console(url, made[0])


def text(page: str) -> str:
    """A page's words, tags removed and spaces collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", page).split())


def test_the_pages_show_a_failed_instance(console: Console) -> None:
    instances = console.request("/pipeline/instances")
    assert instances.status == 200
    assert 'id="instance-1"' in instances.body and "ERRORS_STALLED" in instances.body
    assert "6 / 2 / 8" in text(instances.body), "completed / failed / total subtasks"
    assert "0 of 2" in text(instances.body), "tasks done of total"
    assert 'id="auto-refresh"' not in instances.body, "nothing runs: no refresh"
    assert 'class="table-responsive"' in instances.body, "tables scroll in their own box"

    instance = console.request("/pipeline/instances/1")
    assert instance.status == 200
    assert 'data-node="permuter" data-state="error"' in instance.body
    assert 'data-node="flip" data-state="pending"' in instance.body
    assert 'data-node="averaging" data-state="pending"' in instance.body
    assert "2 tasks, 6/8 (2)" in instance.body
    rows = re.findall(r'<tr id="task-(\d+)">(.*?)</tr>', instance.body, re.S)
    assert [int(task) for task, _ in rows] == list(TASKS)
    for _, row in rows:
        assert "ERROR - ALGORITHM_COMPLETE" in row and "3/4 (1)" in row
    assert "throw_exception_subtask_0" in instance.body, "the frozen parameter values"
    assert 'data-node="permuter"' in instance.body.split('id="figures"')[1], "run-time figures"
    assert 'name="_xsrf"' in instance.body

    task = console.request(f"/pipeline/tasks/{TASKS[0]}")
    assert task.status == 200
    words = text(task.body)
    assert "ERROR - ALGORITHM_COMPLETE" in words and "1 of 4 subtasks failed" in words
    assert "ALGORITHM_QUEUED" in words.split("History")[1], "the history"
    failed = console.request(f"/pipeline/tasks/{TASKS[0]}?state=FAILED")
    assert re.findall(r'<tr id="subtask-(\d+)">', failed.body) == ["0"]
    assert "RuntimeError: subtask 0 failed on purpose" in failed.body

    log = console.request(f"/pipeline/tasks/{TASKS[0]}/subtasks/0/log")
    assert log.status == 200 and "subtask 0 failed on purpose" in log.body
    download = console.request(f"/pipeline/tasks/{TASKS[0]}/subtasks/0/log?view=download")
    assert "attachment" in download.headers["Content-Disposition"]
    assert "Traceback" in download.body and "<html" not in download.body

    for page in ("/pipeline/alerts", "/pipeline/definitions", "/pipeline/parameters"):
        assert console.request(page).status == 200, page
    definitions = console.request("/pipeline/definitions").body
    assert 'data-node="averaging"' in definitions


def test_preview_then_restart_from_the_task_page(console: Console, worker: InProcessWorker) -> None:
    before = queries.list_tasks(1)
    fields = {"mode": "resume-current-step", "setting-subtask_timeout": "600"}
    preview = console.request(f"/pipeline/tasks/{TASKS[0]}", {**fields, "action": "preview"})
    assert preview.status == 200
    assert 'id="preview"' in preview.body and "store the successful subtasks" in preview.body
    assert "Downstream (may become stale)" in preview.body
    assert 'name="downstream"' in preview.body, "the form offers to run what is downstream"
    assert queries.list_tasks(1) == before, "a preview changes nothing"

    refused = console.request(
        f"/pipeline/tasks/{TASKS[0]}", {"mode": "resubmit", "setting-queue": "bad queue!"}
    )
    assert refused.status == 422, "a value the setting cannot take: refused whole"
    [line] = re.findall(r'<div id="result"[^>]*>(.*?)</div>', refused.body, re.S)
    assert "queue" in line and "\n" not in line.strip()
    assert queries.list_tasks(1) == before, "a refused restart changes nothing"

    applied = console.request(f"/pipeline/tasks/{TASKS[0]}", {**fields, "action": "apply"})
    assert applied.status == 200
    assert "task 1 resume-current-step: store the successful subtasks" in applied.body
    worker.drain()
    task = queries.get_task(TASKS[0])
    assert task["state"] == "COMPLETE" and task["execution"]["subtask_timeout"] == 600


def test_restart_all_failed_from_the_instance_page(
    console: Console, worker: InProcessWorker
) -> None:
    preview = console.request(
        "/pipeline/instances/1", {"mode": "resume-current-step", "action": "preview"}
    )
    assert len(re.findall('class="preview-outcome"', preview.body)) == 2
    assert 'id="confirm-restart"' in preview.body
    console.request("/pipeline/instances/1", {"mode": "resume-current-step", "action": "apply"})
    worker.drain()
    assert queries.get_instance(1)["state"] == "COMPLETED"


def test_bad_addresses_and_arguments_are_one_line_4xx(console: Console) -> None:
    for path, status, line in [
        ("/pipeline/instances/999", 404, "unknown instance 999"),
        ("/pipeline/instances/abc", 422, "'abc' is not an instance id"),
        ("/pipeline/tasks/999", 404, "unknown task 999"),
        ("/pipeline/tasks/1/subtasks/9/log", 404, "task 1 has no subtask 9"),
        ("/pipeline/instances?page=0", 422, "page 0 is out of range: pages start at 1"),
        ("/pipeline/instances?page=x", 422, "page must be a whole number, not 'x'"),
        ("/pipeline/instances?state=NOPE", 422, "unknown instance state 'NOPE'"),
        ("/pipeline/tasks/1?state=NOPE", 422, "unknown subtask state 'NOPE'"),
    ]:
        answer = console.request(path)
        assert answer.status == status, (path, answer.status)
        [shown] = re.findall(r'<div id="problem"[^>]*>(.*?)</div>', answer.body, re.S)
        assert html.unescape(shown.strip()) == line, path
    for path in ("/pipeline/instances", "/pipeline/tasks/1", "/pipeline/alerts", "/metrics"):
        assert console.request(path, auth=False).status == 401, path


def test_the_restart_page_shows_a_few_errors_of_many(console: Console) -> None:
    with transaction() as session:  # every subtask of task 1 failed
        session.execute(
            update(Subtask).where(Subtask.task_id == TASKS[0]).values(state="FAILED", error="boom")
        )
        from pipeline.domain.models import Task

        session.execute(update(Task).where(Task.id == TASKS[0]).values(failed_subtasks=4))
    page = console.request("/pipeline/restart").body
    row = re.search(rf'<tr id="task-{TASKS[0]}">(.*?)</tr>', page, re.S).group(1)
    assert len(re.findall(r"subtask \d+: ", row)) == 3
    assert f'/pipeline/tasks/{TASKS[0]}?state=FAILED">all 4 failed subtasks' in row


def test_metrics_carry_the_pipelines_figures(console: Console) -> None:
    metrics = console.request("/metrics").body
    assert 'pipeline_instances{state="ERRORS_STALLED"} 1.0' in metrics
    assert 'pipeline_tasks{error="true",p_state="ALGORITHM_COMPLETE"} 2.0' in metrics
    assert 'pipeline_subtasks{state="FAILED"} 2.0' in metrics
    assert 'pipeline_subtask_duration_seconds_count{node="permuter"} 8.0' in metrics
    assert "pipeline_up 1.0" in metrics


def test_pages_show_one_page_of_many_rows(console: Console) -> None:
    """An instance of 120 tasks and a task of 130 subtasks: each page carries 50 rows and
    the pager, never every row (the figures at 10,000 tasks are in ``make bench``)."""
    from sqlalchemy import insert

    from pipeline.domain.models import Task

    with transaction() as session:
        session.execute(
            insert(Task),
            [
                {"instance_id": 1, "node": "flip", "unit_of_work": f"u{n}", "execution": {}}
                for n in range(118)
            ],
        )
        session.execute(
            insert(Subtask),
            [{"task_id": TASKS[0], "index": n, "inputs": []} for n in range(4, 130)],
        )
    first = console.request("/pipeline/instances/1")
    assert len(re.findall(r'<tr id="task-\d+">', first.body)) == 50
    assert "120 in all, page 1 of 3" in text(first.body)
    last = console.request("/pipeline/instances/1?page=3")
    assert len(re.findall(r'<tr id="task-\d+">', last.body)) == 20
    assert 'rel="next"' not in last.body and 'rel="prev"' in last.body
    subtasks = console.request(f"/pipeline/tasks/{TASKS[0]}?per_page=100")
    assert len(re.findall(r'<tr id="subtask-\d+">', subtasks.body)) == 100
    assert "130 in all, page 1 of 2" in text(subtasks.body)
    new = console.request(f"/pipeline/tasks/{TASKS[0]}?state=NEW")
    assert "126 in all" in text(new.body)


def test_alerts_are_listed_filtered_and_acknowledged(console: Console) -> None:
    from pipeline.domain.models import Alert

    with transaction() as session:
        session.add_all(
            [
                Alert(severity="warning", instance_id=1, task_id=1, message="worker w1 lost"),
                Alert(severity="error", instance_id=1, task_id=2, message="lost 4 times"),
            ]
        )
    listed = console.request("/pipeline/alerts")
    ids = [int(found) for found in re.findall(r'<tr id="alert-(\d+)">', listed.body)]
    assert len(ids) == 2 and "worker w1 lost" in listed.body
    errors = console.request("/pipeline/alerts?severity=error")
    assert re.findall(r'<tr id="alert-(\d+)">', errors.body) == [str(max(ids))]
    done = console.request(f"/pipeline/alerts/{max(ids)}/acknowledge", {})
    assert f"alert {max(ids)} acknowledged" in done.body
    assert [a["id"] for a in queries.list_alerts()] == [min(ids)]
    again = console.request(f"/pipeline/alerts/{max(ids)}/acknowledge", {})
    assert f"alert {max(ids)} is already acknowledged" in again.body
    everything = console.request("/pipeline/alerts?acknowledged=1")
    assert len(re.findall(r'<tr id="alert-(\d+)">', everything.body)) == 2


def test_pages_live_under_flowers_url_prefix(failed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flower.options import options

    monkeypatch.setenv("PIPELINE_FLOWER_PASSWORD", PASSWORD)
    monkeypatch.setenv("PIPELINE_FLOWER_PORT", str(free_port()))
    monkeypatch.setenv("FLOWER_URL_PREFIX", "flower")
    point_here()
    from pipeline.interfaces import flower
    from pipeline.settings import get_settings

    try:
        with flower.in_thread(get_settings()) as url:
            console = Console(url)
            page = console.request("/flower/pipeline/instances")
            assert page.status == 200
            assert 'href="/flower/pipeline/instances/1"' in page.body
            assert 'href="/flower/pipeline/alerts"' in page.body, "the navbar's links"
            assert console.request("/pipeline/instances").status == 404
            task = console.request(f"/flower/pipeline/tasks/{TASKS[0]}")
            assert f'href="/flower/pipeline/tasks/{TASKS[0]}/subtasks/0/log"' in task.body
    finally:
        options.url_prefix = ""  # Tornado's options are the process's


# -- Flower's own pages, the forms' token, numbers out of range -------------------------------


def test_the_console_shadows_none_of_flowers_templates() -> None:
    """A console template named like one of Flower's (task.html) must not replace it:
    Flower's task page then failed for every task (HTTP 500)."""
    from tornado import template

    from pipeline.interfaces.console import TEMPLATES
    from pipeline.interfaces.flower import PipelineTemplates

    flowers = Path(__import__("flower").__file__).parent / "templates"
    loader = PipelineTemplates(str(flowers))
    clashing = sorted(p.name for p in TEMPLATES.glob("*.html") if (flowers / p.name).exists())
    assert "task.html" in clashing, "the case this test is about"
    for name in clashing:
        flowers_own = template.Template((flowers / name).read_bytes(), name=name, loader=loader)
        assert loader.load(name).code == flowers_own.code, name


def test_flowers_task_page_shows_a_failed_tasks_exception(console: Console) -> None:
    """Flower's own task page, with the console installed, for a Celery task that failed."""
    uuid = "5e1f1a52-0000-4000-8000-000000000001"
    for event in [
        {
            "type": "task-received",
            "uuid": uuid,
            "name": "pipeline.stage.subtask",
            "args": "(1, 1, 0)",
            "kwargs": "{}",
            "hostname": "worker1@here",
        },
        {"type": "task-started", "uuid": uuid, "hostname": "worker1@here"},
        {
            "type": "task-failed",
            "uuid": uuid,
            "hostname": "worker1@here",
            "exception": "RuntimeError('subtask 0 failed on purpose')",
            "traceback": "Traceback (most recent call last):\n  RuntimeError: on purpose",
        },
    ]:
        now = time.time()
        console.app.events.state.event(
            {**event, "timestamp": now, "local_received": now, "clock": 1}
        )
    page = console.request(f"/task/{uuid}")
    assert page.status == 200, page.body[-500:]
    assert "subtask 0 failed on purpose" in page.body and "Traceback" in page.body


def test_a_post_without_this_logins_token_is_refused_and_changes_nothing(
    console: Console,
) -> None:
    before = queries.list_tasks(1)
    apply = {"mode": "resume-current-step", "action": "apply"}
    for answer in (
        console.request("/pipeline/instances/1", apply, token=False),
        console.request("/pipeline/instances/1", {**apply, "_xsrf": "abc"}, Cookie="_xsrf=abc"),
        console.request(
            "/pipeline/instances/1",
            apply,
            **{"Sec-Fetch-Site": "cross-site", "Origin": "https://elsewhere.example"},
        ),
    ):
        assert answer.status == 403, answer.status
        assert len(text(answer.body).splitlines()) == 1
    refused = console.request("/pipeline/instances/1", apply, token=False).body
    [line] = re.findall(r'<div id="problem"[^>]*>(.*?)</div>', refused, re.S)
    assert "token is missing or not yours" in line
    assert queries.list_tasks(1) == before
    assert console.request("/pipeline/instances/1", apply, auth=False).status == 401


#: What the fuzz sends as each number or word a console page reads.
HOSTILE = ["9223372036854775807", "-9223372036854775808", "1e400", "x" * 20_000]
#: Each console page and the query arguments it reads.
PAGES = {
    "/pipeline/instances": ("page", "per_page", "state", "pipeline"),
    "/pipeline/instances/1": ("page", "per_page"),
    "/pipeline/tasks/1": ("page", "per_page", "state"),
    "/pipeline/tasks/1/subtasks/0/log": ("view",),
    "/pipeline/alerts": ("page", "per_page", "severity", "acknowledged"),
    "/pipeline/parameters": ("name", "version", "older", "newer"),
    "/pipeline/definitions": (),
    "/pipeline/restart": (),
}


def test_every_number_out_of_range_is_a_one_line_4xx(console: Console) -> None:
    for path, arguments in PAGES.items():
        for argument in arguments:
            for value in HOSTILE:
                query = {argument: value}
                if argument in ("older", "newer"):
                    query = {"name": "algorithm", "older": "1", "newer": "1", argument: value}
                answer = console.request(f"{path}?{urllib.parse.urlencode(query)}")
                assert answer.status < 500, (path, argument, value[:30], answer.body[-300:])
    for path in (
        "/pipeline/instances/9223372036854775807",
        "/pipeline/tasks/9223372036854775807",
        "/pipeline/tasks/1/subtasks/9223372036854775807/log",
        "/pipeline/tasks/9223372036854775807/subtasks/0/log",
    ):
        answer = console.request(path)
        assert 400 <= answer.status < 500, (path, answer.status)
    answer = console.request("/pipeline/instances?page=9223372036854775807")
    [line] = re.findall(r'<div id="problem"[^>]*>(.*?)</div>', answer.body, re.S)
    assert html.unescape(line.strip()) == (
        "page '9223372036854775807' is out of range (0 to 2147483647)"
    )


def test_a_page_of_work_under_way_refreshes_unless_a_form_is_edited(console: Console) -> None:
    """No Refresh header (it reloaded the page over a half-filled form): a script that
    reloads only while no form is being edited, and says so; the DAG scrolls in a box of
    its own, not Flower's 400-pixel one."""
    from pipeline.domain.models import PipelineInstance, Task

    with transaction() as session:
        session.execute(update(PipelineInstance).values(state="PROCESSING"))
        session.execute(
            update(Task)
            .where(Task.id == TASKS[1])
            .values(error=False, p_state="ALGORITHM_EXECUTING")
        )
    page = console.request("/pipeline/instances/1")
    assert "Refresh" not in page.headers
    assert 'id="auto-refresh"' in page.body and "it stops while you edit a form" in page.body
    assert "overflow-auto" not in page.body and 'class="pipeline-dag-box"' in page.body


def test_the_restart_page_previews_before_it_restarts(
    console: Console, worker: InProcessWorker
) -> None:
    """The Restart tab applied what it was posted (it ignored a preview): now its buttons
    ask for the dry run, and only the confirmation restarts."""
    before = queries.list_tasks(1)
    page = console.request("/pipeline/restart").body
    assert "Preview restart of all failed tasks" in page and "Halt task" not in page
    fields = {"instance": "1", "mode": "resume-current-step", "action": "preview"}
    preview = console.request("/pipeline/restart", fields)
    assert preview.status == 200 and 'id="confirm-restart"' in preview.body
    assert len(re.findall('class="preview-outcome"', preview.body)) == 2
    assert queries.list_tasks(1) == before, "a preview changes nothing"
    console.request("/pipeline/restart", {**fields, "action": "apply"})
    worker.drain()
    assert queries.get_instance(1)["state"] == "COMPLETED"

    # Completed, its failed subtasks abandoned: said so, not offered as a restart of all.
    for path in ("/pipeline/restart", "/pipeline/instances/1"):
        page = console.request(path).body
        assert "Completed: 2 tasks stored without their failed subtasks" in page, path
        assert 'id="restart-all"' not in page and 'class="restart-all' not in page, path


def test_halting_every_running_task_of_an_instance_asks_first(console: Console) -> None:
    from pipeline.domain.models import PipelineInstance, Task

    with transaction() as session:
        session.execute(update(PipelineInstance).values(state="PROCESSING"))
        session.execute(update(Task).values(error=False, p_state="ALGORITHM_EXECUTING"))
    asked = console.request("/pipeline/halt", {"instance": "1", "back": "/pipeline/instances/1"})
    assert asked.status == 200
    assert "Halt the 2 running tasks of instance 1?" in text(asked.body)
    assert 'id="confirm-halt"' in asked.body
    assert all(not t["error"] for t in queries.list_tasks(1)), "nothing halted yet"
    assert "Halt task" not in console.request("/pipeline/restart").body, "running: not listed"
    console.request("/pipeline/halt", {"instance": "1", "action": "apply"})
    assert all(t["error"] for t in queries.list_tasks(1)), "both halted once confirmed"


def test_a_pipeline_is_submitted_from_the_browser_after_a_dry_run(
    console: Console, worker: InProcessWorker
) -> None:
    page = console.request("/pipeline/submit")
    assert page.status == 200 and 'id="submit-form"' in page.body
    before = queries.list_instances()
    fields = {"pipeline": "sample", "end_node": "permuter", "priority": "", "action": "preview"}
    preview = console.request("/pipeline/submit", fields)
    assert preview.status == 200 and 'id="confirm-submit"' in preview.body
    assert "Nodes, in order: permuter." in text(preview.body)
    assert "permuter 2 set-1 (4), set-2 (4)" in text(preview.body)
    assert queries.list_instances() == before, "a preview submits nothing"
    chosen = console.request("/pipeline/submit", {**fields, "end_node": "", "exclude": "set-2"})
    assert "flip 1 set-1; subtasks counted once its parents store" in text(chosen.body)
    assert queries.list_instances() == before
    refused = console.request("/pipeline/submit", {**fields, "priority": "12"})
    assert "priority" in text(refused.body) and queries.list_instances() == before
    done = console.request("/pipeline/submit", {**fields, "action": "apply"})
    assert done.status == 200
    assert "instance 2 of sample submitted with 2 tasks" in text(done.body)
    worker.drain()
    # This home's parameters fail subtask 0 on purpose, as they did instance 1's.
    assert [t["counts"] for t in queries.list_tasks(2)] == ["3/4 (1)", "3/4 (1)"]


def test_a_parameter_is_changed_from_the_browser_as_a_new_version(console: Console) -> None:
    """Version 1 is locked (instance 1 used it): the change is previewed, then saved as
    version 2, as pipeline params set does."""
    page = console.request("/pipeline/parameters?name=algorithm")
    assert 'id="edit-parameters"' in page.body and "version 1 is locked" in page.body
    fields = {"name": "algorithm", "value-throw_exception_subtask_0": "false"}
    preview = console.request("/pipeline/parameters", {**fields, "action": "preview"})
    assert 'id="confirm-parameters"' in preview.body
    assert "version 2 (new)" in text(preview.body)
    assert queries.show_parameter_set("algorithm")["version"] == 1, "a preview saves nothing"
    bad = console.request(
        "/pipeline/parameters", {"name": "algorithm", "value-execution_pause_seconds": "soon"}
    )
    assert "'soon' is not an int" in html.unescape(text(bad.body))
    saved = console.request("/pipeline/parameters", {**fields, "action": "apply"})
    assert "parameter set algorithm version 2: throw_exception_subtask_0 = false" in text(
        saved.body
    )
    shown = queries.show_parameter_set("algorithm")
    assert shown["version"] == 2
    assert {p["name"]: p["value"] for p in shown["parameters"]}[
        "throw_exception_subtask_0"
    ] is False


def test_the_metrics_have_the_names_the_guide_gives(console: Console) -> None:
    from pipeline.recovery import heartbeat

    with transaction() as session:  # the reconciler's age exists once it has run
        heartbeat.record(session, "here")
    metrics = console.request("/metrics").body
    guide = (Path(__file__).parent.parent / "docs" / "operator-guide.md").read_text()
    named = set(re.findall(r"`(pipeline_[a-z_]+)", guide.split("**Metrics.**")[1].split("\n\n")[0]))
    assert len(named) == 17, named
    for name in named:
        sampled = re.search(rf"^{name}(_bucket|_sum|_count)?[{{ ]", metrics, re.M)
        # A labelled family with no sample yet (no restart; no broker here) is declared.
        declared = f"# TYPE {name} " in metrics
        assert sampled or declared, name


def test_an_instances_tasks_are_filtered_and_its_dag_links_to_them(console: Console) -> None:
    page = console.request("/pipeline/instances/1")
    assert (
        '<a href="/pipeline/instances/1?node=permuter#tasks-title" class="dag-link">' in page.body
    )
    assert 'id="task-filters"' in page.body and 'id="jump-page"' in page.body
    only = console.request("/pipeline/instances/1?node=flip")
    assert re.findall(r'<tr id="task-(\d+)">', only.body) == [], "flip has no task yet"
    failed = console.request("/pipeline/instances/1?state=failed&node=permuter")
    assert re.findall(r'<tr id="task-(\d+)">', failed.body) == [str(t) for t in TASKS]
    assert (
        re.findall(
            r'<tr id="task-(\d+)">', console.request("/pipeline/instances/1?state=complete").body
        )
        == []
    )
    bad = console.request("/pipeline/instances/1?state=sleeping")
    assert (
        bad.status == 422
        and "unknown task state 'sleeping' (of failed, running, complete)"
        in html.unescape(bad.body)
    )


def test_a_large_log_is_capped_in_the_full_view_and_downloaded_whole(console: Console) -> None:
    from pipeline.operations import pages

    path = Path(pages.subtask_log_path(TASKS[0], 0))
    with path.open("a") as log:
        log.write(("x" * 99 + "\n") * 30_000)  # 3 MB more
    size = path.stat().st_size
    full = console.request(f"/pipeline/tasks/{TASKS[0]}/subtasks/0/log?view=full")
    assert full.status == 200
    assert f"The log is {size / 1048576:.1f} MiB: showing its first 2 MiB" in text(full.body)
    assert len(full.body) < 3 * 1048576
    whole = console.request(f"/pipeline/tasks/{TASKS[0]}/subtasks/0/log?view=download")
    assert len(whole.body.encode()) == size


def test_queue_depths_show_what_waits_where(console: Console, worker: InProcessWorker) -> None:
    """Restarted tasks behind thousands of messages must not look stuck: each queue says
    what waits on it (the instances page, pipeline queues, /metrics)."""
    facade.submit("sample", None, "permuter")  # not run yet: its marshals wait
    [default] = [q for q in queries.list_queues() if q["queue"] == "default"]
    assert (default["messages"], default["tasks_waiting"]) == (2, 2)
    assert default["oldest_wait_seconds"] is not None
    page = console.request("/pipeline/instances").body
    assert re.search(r'<tr data-queue="default"><td>default</td><td>2</td><td>2</td>', page)
    metrics = console.request("/metrics").body
    assert 'pipeline_queue_messages{queue="default"} 2.0' in metrics
    assert 'pipeline_queue_tasks_waiting{queue="default"} 2.0' in metrics
    worker.drain()
    [default] = [q for q in queries.list_queues() if q["queue"] == "default"]
    assert (default["messages"], default["tasks_waiting"]) == (0, 0)


def test_event_handlers_are_switched_and_models_listed_from_the_console(
    console: Console, tmp_path: Path
) -> None:
    from pipeline.operations import events, models
    from tests.test_events import sample_with_handler
    from tests.test_models import dark, sample_with_model

    sample_with_handler(tmp_path / "a", tmp_path / "incoming")
    empty = console.request("/pipeline/events")
    assert empty.status == 200 and 'id="handler-ingest"' in empty.body
    assert "none yet" in empty.body and 'id="no-models"' in empty.body
    done = console.request("/pipeline/events", {"name": "ingest", "enabled": "0"})
    assert "event handler ingest disabled" in done.body
    assert events.list_handlers()[0]["enabled"] is False
    unknown = console.request("/pipeline/events", {"name": "nosuch", "enabled": "1"})
    assert "unknown event handler &#x27;nosuch&#x27;" in unknown.body
    assert events.list_handlers()[0]["enabled"] is False, "a refused switch changes nothing"
    forged = console.request("/pipeline/events", {"name": "ingest", "enabled": "1"}, token=False)
    assert forged.status == 403 and events.list_handlers()[0]["enabled"] is False

    sample_with_model(tmp_path / "b")
    models.import_model(dark(tmp_path / "in", 3, "d3"), "dark")
    listed = console.request("/pipeline/events")
    assert "dark-3.txt" in listed.body and 'id="no-models"' not in listed.body


def test_the_task_page_shows_the_code_of_each_attempt(console: Console) -> None:
    page = console.request(f"/pipeline/tasks/{TASKS[0]}")
    [ran] = queries.get_task(TASKS[0])["attempts"]
    assert page.status == 200 and 'id="attempts"' in page.body
    assert ran["code_version"] in page.body.replace("&#x27;", "'")


def test_a_node_on_slurm_shows_its_cost_before_and_its_jobs_after(
    console: Console, worker: InProcessWorker, tmp_path: Path
) -> None:
    from tests.test_batch import batch_nodes, run_to_the_end

    with batch_nodes(tmp_path) as system:
        fields = {"pipeline": "sample-batch", "end_node": "permuter", "action": "preview"}
        preview = text(console.request("/pipeline/submit", fields).body)
        assert "permuter 2 8 1.33 - 2 jobs, 8 subtasks, 1.33 node-hours (the default" in preview
        instance = facade.submit("sample-batch", end_node="permuter")["id"]
        worker.drain()
        run_to_the_end(system, worker, instance)  # each element said to run 60 s
        [task, _] = queries.list_tasks(instance)
        [job] = queries.get_task(task["id"])["batch_jobs"]
        page = text(console.request(f"/pipeline/tasks/{task['id']}").body)
        assert (
            "Batch jobs Job Attempt State Elements Queue wait Estimate Actual"
            f" {job['job_id']} 1 ENDED 2: 2 COMPLETED 0 s 0.667 node-h 0.0333 node-h"
        ) in page
        metrics = console.request("/metrics").body
        assert 'pipeline_batch_node_hours_total{partition=""} 0.0666' in metrics
        assert 'pipeline_batch_jobs{state="ENDED"} 2.0' in metrics


def test_a_task_on_slurm_is_restarted_from_its_page_with_its_batch_settings_changed(
    console: Console, worker: InProcessWorker, tmp_path: Path
) -> None:
    from tests.test_batch import batch_nodes, run_to_the_end

    with batch_nodes(tmp_path) as system:
        facade.set_parameters("algorithm", ["throw_exception_subtask_0=true"])
        instance = facade.submit("sample-batch", end_node="permuter")["id"]
        worker.drain()
        run_to_the_end(system, worker, instance)
        [task, _] = queries.list_tasks(instance)
        path = f"/pipeline/tasks/{task['id']}"
        page = console.request(path).body
        for name in BATCH_FIELDS:
            assert f'name="setting-batch.{name}"' in page, name
        on_celery = console.request(f"/pipeline/tasks/{TASKS[0]}").body
        assert 'name="setting-batch.partition"' not in on_celery, "a task on Celery has none"
        before = queries.get_task(task["id"])

        centre = {
            "mode": "resubmit",
            "setting-batch.environment": "centre",
            "setting-batch.architecture": "small",
        }
        preview = console.request(path, {**centre, "action": "preview"})
        assert preview.status == 200
        assert "SBU (partition short;" in text(preview.body), "the centre's queue and price"
        for bad, status, line in [
            (
                {"setting-batch.cores": "many"},
                422,
                "execution setting batch.cores: Input should be a valid integer",
            ),
            (
                {"setting-batch.environment": "nowhere"},
                404,
                "no remote environment 'nowhere' in any imported pipeline",
            ),
            (
                {**centre, "setting-batch.queue": "short", "setting-batch.walltime": "05:00:00"},
                422,
                "batch.walltime 05:00:00: over queue 'short''s limit of 2 hours",
            ),
            ({**centre, "setting-batch.queue": "special"}, 409, "queue 'special' of remote"),
        ]:
            for action in ("preview", "apply"):
                fields = {"mode": "resubmit", **bad, "action": action}
                answer = console.request(path, fields)
                assert answer.status == status, (fields, answer.status)
                [result] = re.findall(r'<div id="result"[^>]*>(.*?)</div>', answer.body, re.S)
                assert line in html.unescape(result) and "\n" not in result.strip(), result
        after = queries.get_task(task["id"])
        assert (after["state"], after["execution"]) == (before["state"], before["execution"])

        applied = console.request(path, {**centre, "action": "apply"})
        assert applied.status == 200
        worker.drain()
        rerun = list(system.jobs.values())[-1].request
        assert (rerun.partition, rerun.cores, rerun.memory_gb) == ("short", 4, 8)


#: The batch settings a task on Slurm offers to change on its page.
BATCH_FIELDS = (
    "partition",
    "account",
    "cores",
    "memory_gb",
    "walltime",
    "max_jobs",
    "subtasks_per_job",
    "environment",
    "architecture",
    "queue",
)
