"""What a restart or halt did to each task it was asked about: one ``Outcome`` per task,
gathered in a ``Report`` that every interface shows in its own form (a table, JSON, a
one-line result on Flower's page, an HTTP answer)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.errors import PipelineError
from pipeline.operations.views import OutcomeView


@dataclass
class Outcome:
    """What an operation did (or, in a dry run, would do) to one task.

    Attributes:
      task_id: the task (0 for an instance's transition, retried by a restart).
      mode: the restart mode, ``halt`` or ``retry-transition``.
      ok: whether it went ahead; when not, ``message`` says why.
      start_from: the P-state the task goes back to.
      subtasks: the subtasks that run again (or were revoked, for a halt).
      downstream: the tasks that consumed what the task stored, directly or through
        others: what running it again may make stale (``--downstream`` runs them again).
      refusal: the error that refused it, so the HTTP API answers with that error's status.
    """

    task_id: int
    mode: str
    ok: bool
    message: str
    start_from: str = ""
    subtasks: list[int] = field(default_factory=list)
    downstream: list[int] = field(default_factory=list)
    refusal: PipelineError | None = field(default=None, repr=False, compare=False)

    @classmethod
    def refused(cls, task_id: int, mode: str, error: PipelineError) -> Outcome:
        return cls(task_id, mode, False, str(error), refusal=error)

    def as_dict(self) -> OutcomeView:
        return OutcomeView(
            task_id=self.task_id,
            mode=self.mode,
            ok=self.ok,
            message=self.message,
            start_from=self.start_from,
            subtasks=self.subtasks,
            downstream=self.downstream,
        )

    def line(self) -> str:
        """One line for an operator: ``task 5 resume-current-step: retry storing``."""
        subject = f"task {self.task_id}" if self.task_id else "instance"
        return f"{subject} {self.mode if self.ok else 'refused'}: {self.message}"


@dataclass(frozen=True)
class Report:
    """The outcomes of one operation, in the order the tasks were asked for."""

    outcomes: list[Outcome]

    @property
    def ok(self) -> bool:
        """Did every task go ahead?"""
        return all(outcome.ok for outcome in self.outcomes)

    @property
    def summary(self) -> str:
        """What happened, on one line (Flower's page and the Celery operations' results)."""
        return "; ".join(outcome.line() for outcome in self.outcomes)

    def refusal(self) -> PipelineError | None:
        """The error standing for the whole report when every task was refused (so nothing
        changed), else None: some went ahead, and the refused ones are reported beside."""
        refusals = [outcome.refusal for outcome in self.outcomes if outcome.refusal]
        if not refusals or len(refusals) < len(self.outcomes):
            return None
        if len(refusals) == 1:
            return refusals[0]
        return type(refusals[0])("; ".join(map(str, refusals)))

    def as_dicts(self) -> list[OutcomeView]:
        return [outcome.as_dict() for outcome in self.outcomes]
