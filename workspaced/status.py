"""
Read state counts and recent transitions from the tables, and print them as tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from storage import errors
from storage.queries import sql


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """
    Format rows as a plain-text table with a header line.
    """
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%H:%M:%S.%f")[:-3]
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


async def report(dsn: str, recent: int = 15) -> str:
    """
    Return the state counts and the latest transitions as two tables.
    """
    with errors.translated():
        conn = await asyncpg.connect(dsn)
        try:
            counts = await conn.fetch(sql("status_counts"))
            latest = await conn.fetch(sql("status_recent"), recent)
        finally:
            await conn.close()
    parts = ["chats per state", table(["state", "chats"], [tuple(r) for r in counts]), ""]
    parts.append(f"latest {len(latest)} transitions")
    parts.append(
        table(
            ["chat", "from", "to", "trigger", "at", "detail"],
            [
                (
                    r["chat_id"][:8],
                    r["from_state"],
                    r["to_state"],
                    r["trigger"],
                    r["occurred_at"],
                    _detail(r["detail"]),
                )
                for r in latest
            ],
        )
    )
    return "\n".join(parts)


def _detail(detail: Any) -> str:
    if isinstance(detail, str):
        import orjson  # noqa: PLC0415

        detail = orjson.loads(detail)
    reason = detail.get("reason") if isinstance(detail, dict) else None
    return str(reason or "")
