"""The pipeline console: Flower pages for instances, tasks, subtasks, logs, alerts,
definitions and parameter sets, with restart (a dry-run preview first) and halt.

Every page is rendered on the server with Flower's own templates and Bootstrap, behind
Flower's auth (``@tornado.web.authenticated`` on each method), and reads and acts only
through the operations (the facade's commands, the queries and pages), off Tornado's
I/O loop. An operator's error (an unknown
id, a refused restart, a bad page number) is one line: on the page that was acted on, or
as a 4xx page of its own; never a traceback. Forms post with a token bound to the
login (``form_token``: a POST without it is 403), act, then redirect back to their page
with a signed one-line result.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import shlex
from collections.abc import Awaitable, Callable
from functools import partial
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import tornado.web
from flower.views import BaseHandler
from tornado.web import decode_signed_value

from pipeline.domain.execution import BATCH_PREFIX, BatchSettings
from pipeline.domain.lifecycle import Executor
from pipeline.domain.limits import MAX_ID, parse_id
from pipeline.domain.words import BATCH_JOB_COLUMNS, batch_job_cells
from pipeline.errors import InvalidInput, shown
from pipeline.interfaces import dag
from pipeline.interfaces.statuses import status as http_status
from pipeline.operations import events, facade, models, pages, queries
from pipeline.operations.outcomes import Report
from pipeline.operations.problems import Problem as OperatorsProblem
from pipeline.operations.problems import problem
from pipeline.operations.views import submitted_line

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
#: The prefix of the console's template names, so that none shadows one of Flower's.
NAMESPACE = "pipeline/"
#: The query argument carrying an action's signed result back to the page, and its life.
RESULT_ARGUMENT = "result"
RESULT_MAX_AGE_DAYS = 1
#: A form field choosing a task's restart mode is named ``mode-<task id>``; an execution
#: setting changed with a restart ``setting-<name>``.
TASK_MODE_FIELD = "mode-"
SETTING_FIELD = "setting-"
#: The execution settings a restart form offers (any other goes through the CLI's --set).
EDITABLE_SETTINGS = (
    "queue",
    "subtask_timeout",
    "max_failed_subtasks",
    "max_auto_resubmits",
    "priority",
    "batch_size",
)
#: The button that asks for a dry run rather than the restart itself, and the one that
#: confirms what a page showed first.
PREVIEW, APPLY = "preview", "apply"
#: Bytes of a log sent at a time when it is downloaded.
LOG_CHUNK_BYTES = 1 << 20
#: Seconds between refreshes of a page showing work under way.
REFRESH_SECONDS = 5


# -- acting through the facade's commands ---------------------------------------------------


def acting(action: Callable[[], Report]) -> tuple[bool, str]:
    """Run ``action``: (all went ahead, one line); an operator's error is the line instead."""
    try:
        report = action()
    except Exception as exc:
        found = problem(exc)
        if found is None:
            raise
        return False, found.message
    return report.ok, report.summary


def settings_from(fields: dict[str, str]) -> dict[str, str]:
    """The execution settings a form changes: its non-empty ``setting-<name>`` fields."""
    return {
        name.removeprefix(SETTING_FIELD): value.strip()
        for name, value in fields.items()
        if name.startswith(SETTING_FIELD) and value.strip()
    }


def offered_settings(execution: dict[str, Any]) -> dict[str, str]:
    """The execution settings a task's restart form offers (every batch setting too when
    its node runs on a batch system, each changed as ``restart --set batch.NAME=VALUE``
    changes it), each with its value now ("unset" when it has none)."""
    now = {**execution, **{BATCH_PREFIX + k: v for k, v in (execution.get("batch") or {}).items()}}
    names = list(EDITABLE_SETTINGS)
    if execution.get("executor", Executor.CELERY) != Executor.CELERY:
        names += [BATCH_PREFIX + name for name in BatchSettings.model_fields]
    return {name: _setting_text(now.get(name)) for name in names}


def _setting_text(value: Any) -> str:
    """A setting's value as a form shows it: a list as a shell would, none as "unset"."""
    if value in (None, "", []):
        return "unset"
    return shlex.join(value) if isinstance(value, list) else str(value)


def restart_report(fields: dict[str, str], dry_run: bool = False) -> Report:
    """The restart a form asks for: every failed task of ``instance`` in ``mode``, the
    ``task`` in ``mode``, or each task whose ``mode-<id>`` field names a mode; with the
    execution settings it changes."""
    settings = settings_from(fields)
    if fields.get("instance"):
        instance = parse_id(fields["instance"], "instance")
        if not fields.get("mode"):
            raise InvalidInput("choose the restart mode for the instance's failed tasks")
        return facade.restart_failed(instance, fields["mode"], settings, dry_run)
    if fields.get("task"):
        if not fields.get("mode"):
            raise InvalidInput("choose a restart mode")
        task = parse_id(fields["task"], "task")
        downstream = bool(fields.get("downstream"))
        return facade.restart([task], fields["mode"], settings, dry_run, downstream)
    chosen = [
        f"{name.removeprefix(TASK_MODE_FIELD)}:{mode}"
        for name, mode in fields.items()
        if name.startswith(TASK_MODE_FIELD) and mode
    ]
    if not chosen:
        raise InvalidInput("choose a restart mode for at least one task")
    return facade.restart(chosen, None, settings, dry_run)


def halt_report(fields: dict[str, str]) -> Report:
    """Halt the task the pressed button names, or every running task of ``instance``."""
    if fields.get("instance"):
        return facade.halt_instance(parse_id(fields["instance"], "instance"))
    return facade.halt([parse_id(fields.get("task") or "", "task")])


def restart_from_form(fields: dict[str, str]) -> tuple[bool, str]:
    """Restart what the form asks (see ``restart_report``): (all went ahead, one line)."""
    return acting(partial(restart_report, fields))


def halt_from_form(fields: dict[str, str]) -> tuple[bool, str]:
    """Halt what the form asks (see ``halt_report``): (all went ahead, one line)."""
    return acting(partial(halt_report, fields))


def whole_number(text: str, name: str) -> int:
    """A query argument that must be a whole number from 0 to ``MAX_ID``, or a one-line
    error naming it (read without converting a thousand digits, never past what the
    database's integers hold)."""
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        raise InvalidInput(f"{name} must be a whole number, not {shown(text)}")
    if len(text) > len(str(MAX_ID)) or int(text) > MAX_ID:
        raise InvalidInput(f"{name} {shown(text)} is out of range (0 to {MAX_ID})")
    return int(text)


# -- the handlers ----------------------------------------------------------------------------


class PipelineHandler(BaseHandler):
    """A page of Flower's (its auth, its templates) that reads through the queries and
    pages and acts through the facade."""

    def form_token(self) -> str:
        """The token every console form carries: bound to the login that asked for the
        page (its Authorization header, or its user) and signed with the cookie secret, so
        a form made elsewhere, or a guessed cookie and field pair, cannot act."""
        secret = self.application.settings["cookie_secret"]
        key = secret if isinstance(secret, bytes) else str(secret).encode()
        login = self.request.headers.get("Authorization", "") or str(self.current_user)
        return hmac.new(key, f"pipeline-form:{login}".encode(), hashlib.sha256).hexdigest()

    def xsrf_form_html(self) -> str:
        """The forms' hidden token field (``{% module xsrf_form_html() %}``): ours."""
        return f'<input type="hidden" name="_xsrf" value="{self.form_token()}"/>'

    def check_xsrf_cookie(self) -> None:
        """Every POST: Flower's checks (a cross-site request is refused), then the form's
        token, which must be this login's (Flower skips its own under basic auth). The
        login is checked first: a request without one is answered 401, not 403."""
        super().check_xsrf_cookie()
        if not self.current_user:
            return
        sent = self.get_body_argument("_xsrf", "") or self.request.headers.get("X-Xsrftoken", "")
        if not hmac.compare_digest(sent.encode(), self.form_token().encode()):
            raise Problem(
                403, "this form's token is missing or not yours: reload the page and send it again"
            )

    def form_fields(self) -> dict[str, str]:
        return {
            name: self.get_body_argument(name, strip=False)
            for name in self.request.body_arguments
            if name != "_xsrf"
        }

    async def off_loop(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run an operation in a thread: the database never blocks Flower's I/O loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, partial(call, *args, **kwargs))

    async def read(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A read; an operator's error ends the request as a one-line 4xx page."""
        try:
            return await self.off_loop(call, *args, **kwargs)
        except Exception as exc:
            found = problem(exc)
            if found is None:
                raise
            raise Problem(http_status(found), found.message) from None

    def page_argument(self) -> tuple[int, int]:
        page = whole_number(self.get_argument("page", "1"), "page")
        per_page = whole_number(self.get_argument("per_page", "50"), "per_page")
        return page, per_page

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """An operator's error as a one-line page with its status; anything else as Flower
        shows it (a bug)."""
        found = _operators_problem(kwargs.get("exc_info", (None, None))[1])
        if found is None:
            super().write_error(status_code, **kwargs)
            return
        self.set_status(found.status)
        self.render(f"{NAMESPACE}problem.html", message=found.message, status=found.status)

    def log_exception(self, kind: Any, value: Any, traceback: Any) -> None:
        """An operator's error is one line in the log, not a traceback."""
        found = _operators_problem(value)
        if found is None:
            super().log_exception(kind, value, traceback)
            return
        log.info("%s %s: %s", self.request.method, self.request.path, found.message)

    async def act_and_return(
        self,
        action: Callable[[dict[str, str]], tuple[bool, str]],
        fields: dict[str, str] | None = None,
        back: str | None = None,
    ) -> None:
        """Run ``action`` on the form's fields off the I/O loop, then go ``back`` (else to
        the page the form names, see ``back``) with the one-line result."""
        fields = self.form_fields() if fields is None else fields
        ok, message = await self.off_loop(action, fields)
        self.return_with(ok, message, back or self.back(fields))

    def return_with(self, ok: bool, message: str, target: str) -> None:
        log.info("%s %s", self.request.path, message)
        # Signed, so a link made elsewhere cannot show an operator a result of its own.
        signed = self.create_signed_value(RESULT_ARGUMENT, json.dumps([ok, message]))
        joined = "&" if "?" in target else "?"
        self.redirect(f"{target}{joined}{urlencode({RESULT_ARGUMENT: signed})}", status=303)

    def back(self, fields: dict[str, str]) -> str:
        """Where a form returns: its ``back`` path when it is one of this app's pipeline
        pages (never another site), else the restart page."""
        back = fields.get("back", "")
        prefix = self.reverse_url("pipeline-instances").rsplit("/pipeline/", 1)[0]
        if back.startswith(f"{prefix}/pipeline/") and "//" not in back and "?" not in back:
            return back
        return self.reverse_url("pipeline-restart")

    def result(self) -> tuple[bool, str]:
        """The (ok, one line) of the action that redirected here, else (True, "")."""
        signed = self.get_argument(RESULT_ARGUMENT, "", escape=False)
        secret = self.application.settings["cookie_secret"]
        value = decode_signed_value(secret, RESULT_ARGUMENT, signed, RESULT_MAX_AGE_DAYS)
        if not value:
            return True, ""
        ok, message = json.loads(value)
        return bool(ok), str(message)

    async def preview_or_restart(
        self,
        fields: dict[str, str],
        show: Callable[..., Awaitable[None]],
        back: str | None = None,
    ) -> None:
        """A restart form posted: ``preview`` shows the dry run and a form to confirm it
        (``show`` renders the page with them); anything else restarts, then goes ``back``
        (see ``return_with``) with the one-line result. A restart refused whole (a value
        a setting cannot take, every task refused: nothing changed) answers its 4xx
        status with the page and its one line."""
        dry_run = fields.get("action") == PREVIEW
        report, refused = await self.off_loop(_restart_or_refusal, fields, dry_run)
        if refused is not None:
            self.set_status(http_status(refused))
            await show(fields=fields, ok=False, message=refused.message)
        elif dry_run:
            await show(preview=report, fields=fields, ok=True, message="")
        else:
            self.return_with(report.ok, report.summary, back or self.back(fields))

    async def attempt(self, call: Callable[..., Any], *args: Any) -> tuple[Any, str]:
        """``call`` off the I/O loop: (its result, "") or, for an operator's error,
        (None, its one line)."""
        return await self.off_loop(_attempted, call, *args)  # type: ignore[no-any-return]

    def page_url(self, **query: Any) -> str:
        """This page with ``query`` changed (the pager's and filters' links)."""
        arguments = {name: self.get_argument(name) for name in self.request.arguments}
        arguments.pop(RESULT_ARGUMENT, None)
        arguments.update({key: value for key, value in query.items() if value is not None})
        return f"{self.request.path}?{urlencode(arguments)}"

    def render_page(self, template: str, **values: Any) -> None:
        """Render a console page with the result of the action that led here; a page
        showing work under way (``refresh``) reloads itself every few seconds, unless the
        operator is editing one of its forms (``_refresh.html`` says so)."""
        ok, message = self.result()
        values.setdefault("refresh", False)
        self.render(
            NAMESPACE + template,
            ok=values.pop("ok", ok),
            message=values.pop("message", message),
            modes=facade.restart_modes(),
            page_url=self.page_url,
            duration=duration,
            badge=badge,
            refresh_seconds=REFRESH_SECONDS,
            **values,
        )


class Problem(tornado.web.HTTPError):
    """An operator's error met reading a page: its status and one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, reason=message.encode("ascii", "replace").decode()[:200])
        self.status, self.message = status, message


def _operators_problem(exc: BaseException | None) -> Problem | None:
    """The status and one line of an error an operator caused (see ``problems.problem``)."""
    if isinstance(exc, Problem):
        return exc
    found = problem(exc) if exc is not None else None
    return Problem(http_status(found), found.message) if found else None


#: The colour of an instance's state badge (Bootstrap's), by state; others are grey.
BADGES = {
    "COMPLETED": "success",
    "ERRORS_STALLED": "danger",
    "ERRORS_RUNNING": "warning",
    "TRANSITION_FAILED": "danger",
    "PROCESSING": "primary",
}


def badge(state: str) -> str:
    """The colour of an instance state's badge."""
    return BADGES.get(state, "secondary")


def duration(seconds: float | None) -> str:
    """``1 h 02 min``, ``3 min 05 s``, ``4.2 s``; blank when unknown."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class InstancesPage(PipelineHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        page, per_page = self.page_argument()
        state = self.get_argument("state", "") or None
        pipeline = self.get_argument("pipeline", "") or None
        found = await self.read(pages.instances_page, state, pipeline, page, per_page)
        reconciler = await self.off_loop(facade.reconciler_health)
        waiting = await self.off_loop(queries.list_queues)
        self.render_page(
            "instances.html",
            found=found,
            reconciler=reconciler,
            queues=waiting,
            state=state or "",
            pipeline=pipeline or "",
            refresh=found["running"],
        )


class RestartingPage(PipelineHandler):
    """A page of one instance or task whose form restarts it: ``preview`` re-renders the
    page with the dry run and a form to confirm it; anything else restarts, then returns
    to the page with the result."""

    #: The form field naming what the page shows: ``instance`` or ``task``.
    subject = ""

    async def show(self, shown_id: str, **values: Any) -> None:
        raise NotImplementedError

    @tornado.web.authenticated
    async def get(self, shown_id: str) -> None:
        await self.show(shown_id)

    @tornado.web.authenticated
    async def post(self, shown_id: str) -> None:
        fields = {**self.form_fields(), self.subject: shown_id}
        show = partial(self.show, shown_id, refresh=False)
        await self.preview_or_restart(fields, show, self.request.path)


class InstancePage(RestartingPage):
    """An instance: its DAG, tasks, figures and frozen values; restart all failed tasks."""

    subject = "instance"

    async def show(self, shown_id: str, **values: Any) -> None:
        number = parse_id(shown_id, "instance")
        page, per_page = self.page_argument()
        state = self.get_argument("state", "") or None
        node = self.get_argument("node", "") or None
        overview = await self.read(pages.instance_overview, number)
        tasks = await self.read(pages.tasks_page, number, page, per_page, state, node)
        pictured = [
            {**node, "label": f"{node['tasks']} tasks, {node['counts']}"}
            for node in overview["nodes"]
        ]
        title = f"Pipeline {overview['pipeline']} of instance {number}"
        values.setdefault("refresh", overview["running_tasks"] > 0 and "preview" not in values)
        path = self.request.path

        def node_tasks(name: str) -> str:
            return f"{path}?{urlencode({'node': name})}#tasks-title"

        self.render_page(
            "instance.html",
            instance=overview,
            tasks=tasks,
            state=state or "",
            node=node or "",
            task_filters=list(pages.TASK_FILTERS),
            svg=dag.draw(pictured, title, link=node_tasks),
            legend=dag.MEANINGS,
            fills=dag.FILLS,
            preview=values.pop("preview", None),
            fields=values.pop("fields", {}),
            **values,
        )


class TaskPage(RestartingPage):
    """A task: its history and subtasks; restart it with its settings changed."""

    subject = "task"

    async def show(self, shown_id: str, **values: Any) -> None:
        number = parse_id(shown_id, "task")
        page, per_page = self.page_argument()
        state = self.get_argument("state", "") or None
        task = await self.read(queries.get_task, number)
        subtasks = await self.read(pages.subtasks_page, number, state, page, per_page)
        counts = await self.read(pages.subtask_state_counts, number)
        self.render_page(
            "task.html",
            task=task,
            subtasks=subtasks,
            counts=counts,
            state=state or "",
            settings=offered_settings(task["execution"]),
            batch_job_columns=BATCH_JOB_COLUMNS,
            batch_job_cells=batch_job_cells,
            preview=values.pop("preview", None),
            fields=values.pop("fields", {}),
            refresh=values.pop("refresh", not task["error"] and task["p_state"] != "COMPLETE"),
            **values,
        )


class LogPage(PipelineHandler):
    """A subtask's log: its tail (default), all of it, or as a file to download."""

    @tornado.web.authenticated
    async def get(self, task_id: str, index: str) -> None:
        number, subtask = parse_id(task_id, "task"), whole_number(index, "subtask")
        view = self.get_argument("view", "tail")
        if view not in ("tail", "full", "download"):
            raise Problem(422, f"unknown log view {view[:40]!r} (tail, full or download)")
        path = await self.read(pages.subtask_log_path, number, subtask)
        if view == "download":
            await self.send_log(path, f"task-{number}-subtask-{subtask}.log")
            return
        size = 0
        if view == "tail":
            text, cut = await self.read(pages.log_tail, path)
        else:
            text, size = await self.read(pages.log_head, path)
            cut = size > len(text.encode())
        self.render_page(
            "log.html",
            task_id=number,
            index=subtask,
            text=text,
            cut=cut,
            view=view,
            path=path,
            size=size,
            shown_bytes=pages.LOG_FULL_BYTES,
        )

    async def send_log(self, path: str, name: str) -> None:
        """The whole log as a file, a chunk at a time (never all of it in memory)."""
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="{name}"')
        if not path or not Path(path).is_file():
            return
        with open(path, "rb") as stream:
            while chunk := await self.off_loop(stream.read, LOG_CHUNK_BYTES):
                self.write(chunk)
                await self.flush()


class AlertsPage(PipelineHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        page, per_page = self.page_argument()
        severity = self.get_argument("severity", "") or None
        include = self.get_argument("acknowledged", "") == "1"
        found = await self.read(pages.alerts_page, severity, include, page, per_page)
        self.render_page("alerts.html", found=found, severity=severity or "", acknowledged=include)


class AcknowledgeHandler(PipelineHandler):
    @tornado.web.authenticated
    async def post(self, alert_id: str) -> None:
        fields = self.form_fields()

        def acknowledge() -> tuple[bool, str]:
            done, why_not = _attempted(
                lambda: facade.acknowledge_alert(parse_id(alert_id, "alert"))
            )
            return (True, f"alert {alert_id} acknowledged") if done else (False, why_not)

        ok, message = await self.off_loop(acknowledge)
        target = self.back(fields) if fields.get("back") else self.reverse_url("pipeline-alerts")
        self.return_with(ok, message, target)


def _restart_or_refusal(
    fields: dict[str, str], dry_run: bool
) -> tuple[Report | None, OperatorsProblem | None]:
    """The restart (or dry run) a form asks for, or the refusal standing for all of it."""
    try:
        report = restart_report(fields, dry_run)
    except Exception as exc:
        found = problem(exc)
        if found is None:
            raise
        return None, found
    refusal = report.refusal()
    return (report, None) if refusal is None else (None, problem(refusal))


def _attempted(call: Callable[..., Any], *args: Any) -> tuple[Any, str]:
    """(``call``'s result, "") or, for an operator's error, (None, its one line)."""
    try:
        return call(*args), ""
    except Exception as exc:
        found = problem(exc)
        if found is None:
            raise
        return None, found.message


class EventsPage(PipelineHandler):
    """The event handlers with their last event, enabled and disabled here (as ``pipeline
    events enable|disable``), the recent events, and the model registry."""

    @tornado.web.authenticated
    async def get(self) -> None:
        handlers = await self.read(events.list_handlers)
        recent = await self.read(events.list_events)
        held = await self.read(models.list_models)
        self.render_page("events.html", handlers=handlers, events=recent, models=held)

    @tornado.web.authenticated
    async def post(self) -> None:
        fields = self.form_fields()
        name, enabled = fields.get("name", ""), fields.get("enabled") == "1"

        def switch(_: dict[str, str]) -> tuple[bool, str]:
            done, why_not = _attempted(events.set_enabled, name, enabled)
            if done is None:
                return False, why_not
            return True, f"event handler {name} {'enabled' if enabled else 'disabled'}"

        await self.act_and_return(switch, fields, self.reverse_url("pipeline-events"))


class DefinitionsPage(PipelineHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        listed = await self.read(queries.list_definitions)
        shown = []
        for summary in listed:
            definition = await self.read(queries.show_definition, summary["name"])
            nodes = [
                {
                    "name": node["name"],
                    "after": node.get("after", []),
                    "colour": "pending",
                    "label": str(node.get("algorithm", ""))[:26],
                }
                for node in definition["nodes"]
            ]
            ordered = _topological(nodes)
            svg = dag.draw(ordered, f"Pipeline {summary['name']}")
            shown.append({**summary, "definition": definition, "svg": svg})
        self.render_page("definitions.html", definitions=shown)


def _topological(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Nodes ordered parents first (as ``dag.draw`` expects)."""
    by_name = {node["name"]: node for node in nodes}
    order = TopologicalSorter({n["name"]: set(n["after"]) for n in nodes}).static_order()
    return [by_name[name] for name in order if name in by_name]


def as_text(value: Any) -> str:
    """A parameter's value as an operator types it (``true``, ``[1, 2, 3]``, ``text``)."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _set_parameters(name: str, changes: dict[str, str]) -> tuple[bool, str]:
    """Save a parameter form's changes: (saved, one line)."""
    saved, why_not = _attempted(facade.set_parameters, name, changes)
    if saved is None:
        return False, why_not
    said = ", ".join(f"{key} = {value}" for key, value in changes.items())
    return True, f"parameter set {name} version {saved['version']}: {said}"


def parameter_changes(shown: dict[str, Any], fields: dict[str, str]) -> dict[str, str]:
    """The values a parameter form changes: its ``value-<name>`` fields that differ from
    the shown version's, as typed."""
    changed = {}
    for parameter in shown["parameters"]:
        typed = fields.get(f"value-{parameter['name']}")
        if typed is not None and typed != as_text(parameter["value"]):
            changed[parameter["name"]] = typed
    return changed


class ParametersPage(PipelineHandler):
    """Parameter sets, their versions and differences; the latest version's values are
    edited here (a dry run first: what changes, and whether a new version is made because
    the current one is locked), through the facade, as ``pipeline params set`` does."""

    @tornado.web.authenticated
    async def post(self) -> None:
        fields = self.form_fields()
        name = fields.get("name", "")
        shown = await self.read(queries.show_parameter_set, name)
        changes = parameter_changes(shown, fields)
        if fields.get("action") == APPLY and changes:
            ok, message = await self.off_loop(_set_parameters, name, changes)
            self.return_with(
                ok,
                message,
                f"{self.reverse_url('pipeline-parameters')}?{urlencode({'name': name})}",
            )
            return
        after, why_not = await self.attempt(facade.set_parameters, name, changes, True)
        if after is None:
            await self.get(fields=fields, ok=False, message=why_not)
            return
        before = {p["name"]: p["value"] for p in shown["parameters"]}
        listed = [
            {"name": p["name"], "before": before.get(p["name"]), "after": p["value"]}
            for p in after["parameters"]
            if p["name"] in changes
        ]
        await self.get(fields=fields, changes=listed, after=after)

    @tornado.web.authenticated
    async def get(self, **values: Any) -> None:
        sets = await self.read(queries.list_parameter_sets)
        fields = values.pop("fields", {})
        name = (
            fields.get("name") or self.get_argument("name", "") or (sets[0]["name"] if sets else "")
        )
        versions, shown, diff = [], None, None
        older = newer = None
        if name:
            versions = await self.read(pages.parameter_versions, name)
            version_text = self.get_argument("version", "")
            version = whole_number(version_text, "version") if version_text else None
            shown = await self.read(queries.show_parameter_set, name, version)
            older_text, newer_text = self.get_argument("older", ""), self.get_argument("newer", "")
            if older_text and newer_text:
                older = whole_number(older_text, "older")
                newer = whole_number(newer_text, "newer")
                diff = await self.read(pages.parameter_diff, name, older, newer)
        values.setdefault("changes", None)
        values.setdefault("after", None)
        self.render_page(
            "parameters.html",
            sets=sets,
            name=name,
            versions=versions,
            shown=shown,
            diff=diff,
            older=older,
            newer=newer,
            # The latest version is the one edited.
            editable=bool(shown and versions and shown["version"] == versions[0]["version"]),
            fields=fields,
            as_text=as_text,
            **values,
        )


class SubmitPage(PipelineHandler):
    """Submit an instance from the browser: pipeline, start and end node, priority, units;
    a dry run first (nodes, every node's tasks and subtasks, parameter versions), then the
    submit, both
    through the facade (the CLI's checks and words)."""

    @tornado.web.authenticated
    async def get(self) -> None:
        await self.show(self.get_argument("pipeline", ""), {})

    async def show(self, name: str, fields: dict[str, str], **values: Any) -> None:
        definitions = await self.read(queries.list_definitions)
        chosen = next((d for d in definitions if d["name"] == name), None)
        if name and chosen is None:
            raise Problem(404, f"unknown pipeline {shown(name)}")
        chosen = chosen or (definitions[0] if definitions else {"name": "", "nodes": []})
        values.setdefault("planned", None)
        self.render_page(
            "submit.html", definitions=definitions, chosen=chosen, fields=fields, **values
        )

    @tornado.web.authenticated
    async def post(self) -> None:
        fields = self.form_fields()
        try:
            chosen = submit_arguments(fields)
        except InvalidInput as exc:
            await self.show(fields.get("pipeline", ""), fields, ok=False, message=str(exc))
            return
        previewing = fields.get("action") != APPLY
        done, why_not = await self.attempt(
            facade.preview_submit if previewing else facade.submit, *chosen
        )
        if done is None:
            await self.show(chosen[0], fields, ok=False, message=why_not)
        elif previewing:
            await self.show(chosen[0], fields, planned=done)
        else:
            target = self.reverse_url("pipeline-instance", done["id"])
            self.return_with(True, submitted_line(done), target)


def submit_arguments(fields: dict[str, str]) -> tuple[Any, ...]:
    """A submit form's pipeline, start and end node (empty: none), priority, no model
    chosen (the newest of each), and its units and exclude regexps (empty: none)."""
    priority = fields.get("priority", "").strip()
    return (
        fields.get("pipeline", ""),
        fields.get("start_node") or None,
        fields.get("end_node") or None,
        whole_number(priority, "priority") if priority else None,
        (),
        fields.get("units", "").strip() or None,
        fields.get("exclude", "").strip() or None,
    )


class RestartPage(PipelineHandler):
    """Every failed task by instance, for bulk restarts (each task in a mode of its own)."""

    @tornado.web.authenticated
    async def get(self) -> None:
        await self.show()

    async def show(self, **values: Any) -> None:
        groups = await self.read(queries.tasks_needing_attention)
        values.setdefault("preview", None)
        values.setdefault("fields", {})
        self.render_page("restart.html", groups=groups, **values)

    @tornado.web.authenticated
    async def post(self) -> None:
        """``preview`` shows the dry run and a form to confirm it; the confirmation (any
        other action) restarts."""
        await self.preview_or_restart(self.form_fields(), self.show)


class HaltHandler(PipelineHandler):
    """Halt one task at once; every running task of an instance only once confirmed (the
    form's ``action`` is ``apply``): a page first says how many it would halt."""

    @tornado.web.authenticated
    async def post(self) -> None:
        fields = self.form_fields()
        if fields.get("instance") and fields.get("action") != APPLY:
            number = parse_id(fields["instance"], "instance")
            overview = await self.read(pages.instance_overview, number)
            self.render_page("confirm_halt.html", instance=overview, back=self.back(fields))
            return
        await self.act_and_return(halt_from_form, fields)
