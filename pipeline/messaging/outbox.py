"""The outbox: the messages a transaction calls for, delivered only once it has committed.

A transaction that calls for messages collects them in an ``Outbox`` (``transaction()``
yields both). Once it commits they are delivered: published through this process's
publisher, or handed to the caller that runs the transaction (a stage returns them to its
Celery task, which runs some of them itself). A worker therefore never receives work the
database does not know about yet, and a transaction rolled back sends nothing. A message
lost between commit and publish leaves its task waiting in its step, which beat's
reconciler finds (``pipeline.recovery``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy.orm import Session

from pipeline.database import transaction as database_transaction
from pipeline.errors import Unreachable
from pipeline.messaging.messages import Message
from pipeline.messaging.publisher import publisher


class Outbox:
    """The messages one transaction calls for, and the messages it revokes (a halt)."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.revoked: list[str] = []

    def add(self, *messages: Message) -> None:
        self.messages.extend(messages)

    def revoke(self, message_ids: Sequence[str]) -> None:
        """Drop these messages from the queues and terminate the worker processes running
        them (a halt)."""
        self.revoked.extend(message_ids)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Drop the messages called for within the block if it raises, as a savepoint
        rolled back drops its rows (``with session.begin_nested(), outbox.savepoint()``)."""
        marks = len(self.messages), len(self.revoked)
        try:
            yield
        except BaseException:
            del self.messages[marks[0] :], self.revoked[marks[1] :]
            raise


def send(outbox: Outbox) -> None:
    """Publish an outbox through this process's publisher: its messages, then its
    revocations; ``Unreachable`` if the broker refuses."""
    if outbox.messages:
        publisher().publish(outbox.messages)
    if outbox.revoked:
        publisher().revoke(outbox.revoked)


def sending_or_noting(unsent: list[Unreachable]) -> Callable[[Outbox], None]:
    """A ``deliver`` for an operation that happened once it committed (a submit, a
    restart): a broker gone (or refusing writes) meanwhile leaves its tasks waiting in
    their steps for the reconciler, noted in ``unsent``, not raised."""

    def deliver(messages: Outbox) -> None:
        try:
            send(messages)
        except Unreachable as exc:
            unsent.append(exc)

    return deliver


#: What an operation whose messages the broker refused after it committed says.
QUEUED_FOR_RECONCILER = "the broker refused its messages; the reconciler sends them when it can"


@contextmanager
def transaction(
    deliver: Callable[[Outbox], None] = send,
) -> Iterator[tuple[Session, Outbox]]:
    """A database transaction and the outbox of its messages, delivered once it commits
    (published, unless ``deliver`` says otherwise) and dropped if it rolls back."""
    outbox = Outbox()
    with database_transaction() as session:
        yield session, outbox
    deliver(outbox)
