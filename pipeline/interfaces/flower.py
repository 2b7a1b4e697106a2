"""Flower for the pipeline: Celery's monitor, behind basic auth, with a restart page.

The app is built as ``celery flower`` builds it (Flower's environment variables and
``flowerconfig.py`` apply), on the host and port of the settings, with basic auth from
``flower_user`` and ``flower_password`` (``pipeline cluster credentials`` prints them).
The restart page is mounted in Flower's own Tornado application and sits behind the same
auth: it lists failed pipeline tasks by instance and restarts or halts them through the
operations facade the CLI calls, so a rule lives in one place. Its forms post, the
handler acts, then redirects back to the page with a one-line result.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import signal
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from pathlib import Path
from urllib.parse import urlencode

import tornado.web
from flower.app import Flower
from flower.views import BaseHandler
from flower.views.monitor import Metrics
from tornado import template
from tornado.web import decode_signed_value

from config.settings import DEFAULT_FLOWER_PORT, Settings, get_settings
from pipeline.domain.limits import parse_id
from pipeline.errors import InvalidInput, Refused
from pipeline.messaging.celery_app import celery_app
from pipeline.operations import facade

log = logging.getLogger(__name__)

#: Where the pipeline's pages live in Flower, under its ``url_prefix`` if it has one.
RESTART_PATH = "/pipeline/restart"
HALT_PATH = "/pipeline/halt"
METRICS_PATH = "/metrics"
#: Route names, for ``reverse_url`` in templates.
RESTART_ROUTE, HALT_ROUTE = "pipeline-restart", "pipeline-halt"
TEMPLATES = Path(__file__).parent / "templates"
RESTART_TEMPLATE = "restart.html"
NAVBAR_TEMPLATE = "navbar.html"
#: The link added to Flower's navbar, after its own tabs.
NAV_ITEM = """        <li class="nav-item">
          <a class="nav-link{% if active_tab == 'pipeline' %} active{% end %}"
            href="{{ reverse_url('pipeline-restart') }}"
            {% if active_tab == 'pipeline' %}aria-current="page"{% end %}>Restart</a>
        </li>
"""
#: The query argument carrying an action's signed result back to the page, and its life.
RESULT_ARGUMENT = "result"
RESULT_MAX_AGE_DAYS = 1
#: A form field choosing a task's restart mode is named ``mode-<task id>``.
TASK_MODE_FIELD = "mode-"
#: Columns of Flower's task list unless FLOWER_TASKS_COLUMNS or flowerconfig.py say
#: otherwise: the arguments name each stage's pipeline task and attempt.
TASKS_COLUMNS = "name,uuid,state,args,received,runtime,worker"
#: How ``celery flower`` names itself to Tornado's option parser.
PROG = "flower"


class PipelineTemplates(template.Loader):
    """Flower's templates, the pipeline's pages, and Flower's navbar with a link to them.

    Given as the app's ``template_loader`` so Flower's own pages show the link too; a
    navbar whose layout is not recognised (another Flower version) is left as it is.
    """

    def _create_template(self, name: str) -> template.Template:
        own = TEMPLATES / name
        if own.is_file():
            return template.Template(own.read_bytes(), name=name, loader=self)
        if name == NAVBAR_TEMPLATE:
            navbar = (Path(self.root) / name).read_text()
            head, end_of_tabs, tail = navbar.partition("</ul>")
            if end_of_tabs:
                navbar = head + NAV_ITEM + end_of_tabs + tail
            return template.Template(navbar, name=name, loader=self)
        return super()._create_template(name)


def _acting(action: Callable[[], facade.Report]) -> tuple[bool, str]:
    """Run ``action``: (all went ahead, one line); an operator's error is the line instead."""
    try:
        report = action()
    except Exception as exc:
        found = facade.problem(exc)
        if found is None:
            raise
        return False, found.message
    return report.ok, report.summary


def restart_from_form(fields: dict[str, str]) -> tuple[bool, str]:
    """Restart what the form asks: every failed task of ``instance`` in ``mode``, or each
    task whose ``mode-<id>`` field names a mode. Returns (all went ahead, one line)."""

    def act() -> facade.Report:
        if fields.get("instance"):
            instance = parse_id(fields["instance"], "instance")
            if not fields.get("mode"):
                raise InvalidInput("choose the restart mode for the instance's failed tasks")
            return facade.restart_failed(instance, fields["mode"])
        chosen = [
            f"{name.removeprefix(TASK_MODE_FIELD)}:{mode}"
            for name, mode in fields.items()
            if name.startswith(TASK_MODE_FIELD) and mode
        ]
        if not chosen:
            raise InvalidInput("choose a restart mode for at least one task")
        return facade.restart(chosen)

    return _acting(act)


def halt_from_form(fields: dict[str, str]) -> tuple[bool, str]:
    """Halt the task the pressed button names."""

    def act() -> facade.Report:
        return facade.halt([parse_id(fields.get("task") or "", "task")])

    return _acting(act)


class PipelineHandler(BaseHandler):
    """A page of Flower's (its auth, its templates) whose forms act through the facade."""

    def form_fields(self) -> dict[str, str]:
        return {name: self.get_body_argument(name) for name in self.request.body_arguments}

    async def act_and_return(self, action: Callable[[dict[str, str]], tuple[bool, str]]) -> None:
        """Run ``action`` off the I/O loop, then back to the restart page with its result."""
        loop = asyncio.get_running_loop()
        ok, message = await loop.run_in_executor(None, partial(action, self.form_fields()))
        log.info("%s %s", self.request.path, message)
        # Signed, so a link made elsewhere cannot show an operator a result of its own.
        signed = self.create_signed_value(RESULT_ARGUMENT, json.dumps([ok, message]))
        query = urlencode({RESULT_ARGUMENT: signed})
        self.redirect(f"{self.reverse_url(RESTART_ROUTE)}?{query}", status=303)

    def result(self) -> tuple[bool, str]:
        """The (ok, one line) of the action that redirected here, else (True, "")."""
        signed = self.get_argument(RESULT_ARGUMENT, "", escape=False)
        secret = self.application.settings["cookie_secret"]
        value = decode_signed_value(secret, RESULT_ARGUMENT, signed, RESULT_MAX_AGE_DAYS)
        if not value:
            return True, ""
        ok, message = json.loads(value)
        return bool(ok), str(message)


class RestartPage(PipelineHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        loop = asyncio.get_running_loop()
        groups = await loop.run_in_executor(None, facade.tasks_needing_attention)
        ok, message = self.result()
        modes = facade.restart_modes()
        self.render(RESTART_TEMPLATE, groups=groups, modes=modes, message=message, ok=ok)

    @tornado.web.authenticated
    async def post(self) -> None:
        await self.act_and_return(restart_from_form)


class HaltHandler(PipelineHandler):
    @tornado.web.authenticated
    async def post(self) -> None:
        await self.act_and_return(halt_from_form)


class ProtectedMetrics(Metrics):
    """Flower's Prometheus metrics (worker and task names), which Flower leaves open, behind
    the same login as everything else; only ``/healthcheck`` stays open, for readiness."""

    @tornado.web.authenticated
    async def get(self) -> None:
        await super().get()


def routes(url_prefix: str | None) -> list[tornado.web.URLSpec]:
    """The pipeline's pages, and the metrics behind auth; these come before Flower's own
    routes. Flower's ``url_prefix`` rewrites only its own routes, so they get it here."""
    prefix = f"/{url_prefix.strip('/')}" if url_prefix else ""
    return [
        tornado.web.url(prefix + RESTART_PATH, RestartPage, name=RESTART_ROUTE),
        tornado.web.url(prefix + HALT_PATH, HaltHandler, name=HALT_ROUTE),
        tornado.web.url(prefix + METRICS_PATH, ProtectedMetrics),
    ]


def build(settings: Settings, log_file: Path | None = None) -> Flower:
    """Flower as ``celery flower`` makes it, with basic auth and the pipeline's pages."""
    from flower import command
    from flower.options import options
    from flower.urls import settings as flower_settings

    if not settings.flower_password:
        raise Refused(
            "no Flower password: run `pipeline cluster init` (or set PIPELINE_FLOWER_PASSWORD)"
        )
    port = settings.flower_port or DEFAULT_FLOWER_PORT
    argv = [f"--port={port}", f"--address={settings.flower_host}"]
    if log_file:
        argv.append(f"--log_file_prefix={log_file}")
    if settings.tls_certfile:
        argv += [f"--certfile={settings.tls_certfile}", f"--keyfile={settings.tls_keyfile}"]
    options.tasks_columns = TASKS_COLUMNS
    command.apply_env_options()
    command.apply_options(PROG, argv)
    # Set, not parsed: a comma in the password would split it into two logins.
    options.basic_auth = [f"{settings.flower_user}:{settings.flower_password}"]
    command.extract_settings()
    command.setup_logging()
    loader = PipelineTemplates(flower_settings["template_path"])
    flower_app = Flower(
        capp=celery_app(), options=options, template_loader=loader, **flower_settings
    )
    flower_app.add_handlers(r".*", routes(options.url_prefix))
    return flower_app


def serve(log_file: Path | None = None) -> None:
    """Run Flower until SIGTERM (``pipeline cluster stop``) or Ctrl-C."""
    from flower.command import sigterm_handler

    settings = get_settings()
    flower_app = build(settings, log_file)
    try:
        flower_app.start_http_server()
    except OSError as exc:
        raise Refused(f"Flower cannot listen on {settings.flower_url}: {exc}") from None
    atexit.register(flower_app.stop)
    signal.signal(signal.SIGTERM, sigterm_handler)
    log.info("Flower at %s (user %s)", settings.flower_url, settings.flower_user)
    with suppress(KeyboardInterrupt, SystemExit):  # SIGTERM exits through SystemExit
        flower_app.start()
