"""Messages a worker refuses to read (a content type other than JSON, pickle say: Celery
refuses and drops them, and untrusted content must never run): each worker counts them and
says so in one alert, updated as more come until an operator acknowledges it. Someone who
can write to the broker sends them; an operator should know.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from pipeline.domain.models import utcnow
from pipeline.engine import alerts


@dataclass
class RefusedCount:
    """The messages one worker refused since it started."""

    node: str
    count: int = 0
    first: datetime | None = None
    kinds: dict[str, int] = field(default_factory=dict)

    def refused(self, content_type: str, queue: str) -> None:
        """One more refused; the worker's alert says so (logged if it cannot)."""
        self.count += 1
        self.first = self.first or utcnow()
        kind = f"{content_type or 'no content type'} on queue {queue or '?'}"
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        seen = ", ".join(f"{n} {k}" for k, n in sorted(self.kinds.items()))
        message = (
            f"worker {self.node} refused {self.count} untrusted message(s) since"
            f" {self.first:%Y-%m-%d %H:%M:%S} UTC ({seen}): only JSON is accepted; who can"
            " write to the broker?"
        )
        alerts.tell(f"refused:{self.node}", alerts.ERROR, message)
