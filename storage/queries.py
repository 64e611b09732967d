"""
Load the named SQL queries of ``storage/sql/*.sql`` (not the migrations) once.

Each query starts with a ``-- name: <name>`` line, as in procrastinate.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def _all() -> dict[str, str]:
    folder = resources.files("storage").joinpath("sql")
    text = "\n".join(
        f.read_text()
        for f in sorted(folder.iterdir(), key=lambda f: f.name)
        if f.name.endswith(".sql")
    )
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
