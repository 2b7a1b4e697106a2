"""counts /metrics reads, kept on the task rows

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06

``/metrics`` read every subtask row and scanned the task history at each scrape. Each task
now keeps what it adds to the figures, changed in the transactions that change what they
count: its subtasks queued and running (completed and failed were kept already), their
dispatches after the first, its finished subtasks' run-time histogram, its restarts by
mode and its lost work recovered. Filled here from the rows as they stand, as the scrape
used to count them (its buckets and the history's words are copied here: a migration
does not change when the code does).
"""

from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

#: ``domain.run_times.DURATION_BUCKETS`` and the columns counting each bucket's runs, as
#: they were when this migration was written.
BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)
WITHIN = tuple(f"runs_le_{bound:g}".replace(".", "_") for bound in BUCKETS)
COUNTED = (
    "queued_subtasks",
    "running_subtasks",
    "redispatches",
    "lost_work_recoveries",
    "runs",
    "run_micros",
    *WITHIN,
)
STATES = {
    "QUEUED": "queued_subtasks",
    "RUNNING": "running_subtasks",
    "COMPLETE": "completed_subtasks",
    "FAILED": "failed_subtasks",
}


def upgrade() -> None:
    with op.batch_alter_table("tasks") as table:
        for name in COUNTED:
            kind = sa.BigInteger() if name == "run_micros" else sa.Integer()
            table.add_column(sa.Column(name, kind, nullable=False, server_default="0"))
        table.add_column(sa.Column("restarts", sa.JSON(), nullable=True))
    _fill(op.get_bind())


def downgrade() -> None:
    with op.batch_alter_table("tasks") as table:
        for name in ("restarts", *reversed(COUNTED)):
            table.drop_column(name)


def _fill(bind: sa.engine.Connection) -> None:
    """Each task's counts from its subtask rows and its history."""
    found: dict[int, dict[str, Any]] = defaultdict(dict)
    for task_id, state, count, again in bind.execute(
        sa.text(
            "SELECT task_id, state, count(*),"
            " sum(CASE WHEN dispatch > 1 THEN dispatch - 1 ELSE 0 END)"
            " FROM subtasks GROUP BY task_id, state"
        )
    ):
        counts = found[task_id]
        if state in STATES:
            counts[STATES[state]] = int(count)
        counts["redispatches"] = counts.get("redispatches", 0) + int(again or 0)
    if bind.dialect.name == "postgresql":
        seconds = "extract(epoch FROM finished_at - started_at)"
    else:
        seconds = "(julianday(finished_at) - julianday(started_at)) * 86400.0"
    bucket = " ".join(f"WHEN {seconds} <= {bound} THEN {i}" for i, bound in enumerate(BUCKETS))
    for task_id, slot, count, total in bind.execute(
        sa.text(
            f"SELECT task_id, CASE {bucket} ELSE {len(BUCKETS)} END AS slot, count(*),"
            f" sum({seconds}) FROM subtasks"
            " WHERE started_at IS NOT NULL AND finished_at IS NOT NULL GROUP BY task_id, slot"
        )
    ):
        counts = found[task_id]
        counts["runs"] = counts.get("runs", 0) + int(count)
        counts["run_micros"] = counts.get("run_micros", 0) + round(float(total) * 1_000_000)
        if int(slot) < len(WITHIN):
            counts[WITHIN[int(slot)]] = int(count)
    for task_id, message in bind.execute(
        sa.text("SELECT task_id, message FROM task_events WHERE message LIKE 'restart: %'")
    ):
        mode = message.removeprefix("restart: ").split(" ", 1)[0].rstrip(",:")
        restarts = found[task_id].setdefault("restarts", {})
        restarts[mode] = restarts.get(mode, 0) + 1
    for task_id, count in bind.execute(
        sa.text(
            "SELECT task_id, count(*) FROM task_events"
            " WHERE message LIKE '%worker lost, dispatched again%'"
            " OR message LIKE 'marshaling lost on %' GROUP BY task_id"
        )
    ):
        found[task_id]["lost_work_recoveries"] = int(count)
    tasks = sa.table(
        "tasks",
        sa.column("id", sa.Integer),
        *(sa.column(name, sa.Integer) for name in (*COUNTED, *STATES.values())),
        sa.column("restarts", sa.JSON),
    )
    for task_id, values in found.items():
        # A task with subtask rows had its counts of every state: those of none are 0.
        if "redispatches" in values:
            values = {**dict.fromkeys(STATES.values(), 0), **values}
        bind.execute(sa.update(tasks).where(tasks.c.id == task_id).values(**values))
