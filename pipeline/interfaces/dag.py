"""A pipeline's DAG as an SVG picture, drawn on the server (no script, nothing fetched).

Nodes sit in columns by depth (the longest path from a node without parents), each box
coloured by its tasks' states and labelled with its name and subtask counts; an edge runs
from each parent to its child.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape
from typing import Any

#: Box size and the gaps between columns and rows, in SVG user units (pixels).
BOX_WIDTH, BOX_HEIGHT = 170, 54
COLUMN_GAP, ROW_GAP, MARGIN = 60, 24, 10
#: Fill of a node by the colour ``console._node_states`` gives it (Bootstrap's palette).
FILLS = {
    "error": "#dc3545",
    "running": "#0d6efd",
    "complete": "#198754",
    "pending": "#6c757d",
}
#: What each colour means, for the legend and the boxes' titles.
MEANINGS = {
    "error": "a task has its error flag set",
    "running": "tasks under way",
    "complete": "every task complete",
    "pending": "no task yet",
}


def depths(nodes: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Each node's column: 0 without parents, else one more than its deepest parent."""
    found: dict[str, int] = {}
    for node in nodes:  # in topological order, so parents come first
        parents = [found[p] for p in node["after"] if p in found]
        found[node["name"]] = 1 + max(parents) if parents else 0
    return found


def draw(
    nodes: Sequence[dict[str, Any]], title: str, link: Callable[[str], str] | None = None
) -> str:
    """The SVG of ``nodes`` (each with ``name``, ``after``, ``colour`` and ``label``); with
    ``link``, each node is a link (focusable from the keyboard) to ``link(name)``."""
    column = depths(nodes)
    rows: dict[int, int] = {}
    where: dict[str, tuple[int, int]] = {}
    for node in nodes:
        depth = column[node["name"]]
        row = rows.get(depth, 0)
        rows[depth] = row + 1
        x = MARGIN + depth * (BOX_WIDTH + COLUMN_GAP)
        y = MARGIN + row * (BOX_HEIGHT + ROW_GAP)
        where[node["name"]] = (x, y)
    width = MARGIN * 2 + (max(column.values(), default=0) + 1) * (BOX_WIDTH + COLUMN_GAP)
    height = MARGIN * 2 + max(rows.values(), default=1) * (BOX_HEIGHT + ROW_GAP)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="pipeline-dag" role="img"'
        f' width="{width}" height="{height}" viewBox="0 0 {width} {height}"'
        f' aria-label="{escape(title)}"><title>{escape(title)}</title>'
    ]
    for node in nodes:
        x2, y2 = where[node["name"]]
        for parent in node["after"]:
            if parent in where:
                x1, y1 = where[parent]
                parts.append(
                    f'<line x1="{x1 + BOX_WIDTH}" y1="{y1 + BOX_HEIGHT // 2}" x2="{x2}"'
                    f' y2="{y2 + BOX_HEIGHT // 2}" stroke="#888" stroke-width="2"/>'
                )
    for node in nodes:
        x, y = where[node["name"]]
        colour = node["colour"]
        name = escape(node["name"])
        if link is not None:
            parts.append(f'<a href="{escape(link(node["name"]))}" class="dag-link">')
        parts.append(
            f'<g class="dag-node dag-{colour}" data-node="{name}" data-state="{colour}">'
            f"<title>{name}: {escape(MEANINGS[colour])}</title>"
            f'<rect x="{x}" y="{y}" width="{BOX_WIDTH}" height="{BOX_HEIGHT}" rx="6"'
            f' fill="{FILLS[colour]}"/>'
            f'<text x="{x + BOX_WIDTH // 2}" y="{y + 22}" fill="#fff" text-anchor="middle"'
            f' font-weight="bold" font-size="14">{name}</text>'
            f'<text x="{x + BOX_WIDTH // 2}" y="{y + 42}" fill="#fff" text-anchor="middle"'
            f' font-size="12">{escape(node["label"])}</text></g>'
        )
        if link is not None:
            parts.append("</a>")
    parts.append("</svg>")
    return "".join(parts)
