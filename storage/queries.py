"""
Load the named SQL queries of ``storage/sql/queries.sql`` once.

Each query starts with a ``-- name: <name>`` line, as in procrastinate.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def _all() -> dict[str, str]:
    text = resources.files("storage").joinpath("sql", "queries.sql").read_text()
    found: dict[str, str] = {}
    name = None
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("-- name:"):
            if name:
                found[name] = "\n".join(lines).strip()
            name, lines = line.removeprefix("-- name:").strip(), []
        elif name:
            lines.append(line)
    if name:
        found[name] = "\n".join(lines).strip()
    return found


def sql(name: str) -> str:
    """
    Return the text of the query called ``name``.
    """
    return _all()[name]
