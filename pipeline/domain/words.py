"""How the product says a number of things: ``1 file``, ``2 files``; one home, so that the
CLI, the history and the console never say ``1 subtasks``; and a task's job arrays, as
``pipeline task`` and the console's task page show them. Imports nothing of the product's."""

from typing import Any

#: What ``batch_job_cells`` says of a job array, in order.
BATCH_JOB_COLUMNS = ("job", "attempt", "state", "elements", "queue wait", "estimate", "actual")


def counted(number: int, singular: str, plural: str | None = None) -> str:
    """``number`` and the noun it counts, ``1 subtask`` or ``3 subtasks`` (``plural``
    when the noun does not just take an s); thousands separated."""
    noun = singular if number == 1 else (plural or f"{singular}s")
    return f"{number:,} {noun}"


def batch_job_cells(job: dict[str, Any]) -> list[Any]:
    """A job array (``BatchJobView``) in ``BATCH_JOB_COLUMNS``: its elements by state,
    the longest wait in the queue, node-hours estimated and measured (and cost, where
    settings price the partition)."""

    def hours(node_hours: float | None, cost: float | None) -> str:
        if node_hours is None:
            return "-"
        return f"{node_hours:.3g} node-h" + ("" if cost is None else f", cost {cost:.2f}")

    elements = ", ".join(f"{n} {state}" for state, n in sorted(job["elements_by_state"].items()))
    wait = "-" if job["queue_wait"] is None else f"{job['queue_wait']:.0f} s"
    return [
        job["job_id"] or "(submitting)",
        job["attempt"],
        job["state"] + (f" ({job['reason']})" if job["reason"] else ""),
        f"{job['elements']}: {elements}" if elements else job["elements"],
        wait,
        hours(job["estimated_node_hours"], job["estimated_cost"]),
        hours(job["node_hours"], job["cost"]),
    ]
