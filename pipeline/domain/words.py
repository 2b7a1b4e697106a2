"""How the product says a number of things: ``1 file``, ``2 files``; one home, so that the
CLI, the history and the console never say ``1 subtasks``. Imports nothing."""


def counted(number: int, singular: str, plural: str | None = None) -> str:
    """``number`` and the noun it counts, ``1 subtask`` or ``3 subtasks`` (``plural``
    when the noun does not just take an s); thousands separated."""
    noun = singular if number == 1 else (plural or f"{singular}s")
    return f"{number:,} {noun}"
