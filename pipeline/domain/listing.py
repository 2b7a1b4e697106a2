"""How much a listing shows unless asked for more, how an answer of the HTTP API says
how many rows there are in all, and the one form of JSON the CLI prints and the API's
listings answer in: named here, in a module that imports only the standard library (orjson
when JSON is written), so the CLI can name them without loading the database libraries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Rows a table of the CLI shows unless told ``--limit N`` or ``--all``: Rich lays a table
#: out at about 0.4 ms a row (10,000 tasks took 5.75 s to print), and 50 rows fill a screen.
TABLE_ROWS = 50
#: Files a listing shows at most unless told otherwise: a datastore may hold millions.
FILES_SHOWN = 1000
#: The header of a listing's answer over HTTP that says how many rows there are in all,
#: when ``limit`` kept some back (the body stays the plain list the CLI's ``--json`` prints).
TOTAL_HEADER = "X-Total-Count"


@dataclass(frozen=True)
class JsonText:
    """JSON in ``json_text``'s form already: printed as it is (held, not copied: a
    listing of 10,000 tasks is 7 MB)."""

    text: bytes


def json_text(data: Any) -> bytes:
    """``data`` as the CLI's ``--json`` prints it and the HTTP API answers a listing: indented
    by two, ending in a newline. The CLI prints a listing the API answered in this form as
    it came (``is_json_text``): decoding 10,000 tasks and encoding them again took a
    quarter of ``tasks --json``.

    orjson, not the json module: with an indent, json falls back to its pure-Python
    encoder, which took 0.12 s of the 0.82 s ``tasks --json`` took for 10,000 tasks."""
    import orjson

    options = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE
    return orjson.dumps(data, default=str, option=options)


def is_json_text(body: bytes) -> bool:
    """Was this JSON written by ``json_text``? Only its text ends in a newline: the API's
    other answers, and the listings of an API of an earlier version, are compact."""
    return body.endswith(b"\n")
