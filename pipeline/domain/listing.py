"""How much a listing shows unless asked for more, and how an answer of the HTTP API says
how many rows there are in all: named here, in a module that imports nothing, so the CLI
can name them without loading the database libraries."""

#: Rows a table of the CLI shows unless told ``--limit N`` or ``--all``: Rich lays a table
#: out at about 0.4 ms a row (10,000 tasks took 5.75 s to print), and 50 rows fill a screen.
TABLE_ROWS = 50
#: Files a listing shows at most unless told otherwise: a datastore may hold millions.
FILES_SHOWN = 1000
#: The header of a listing's answer over HTTP that says how many rows there are in all,
#: when ``limit`` kept some back (the body stays the plain list the CLI's ``--json`` prints).
TOTAL_HEADER = "X-Total-Count"
