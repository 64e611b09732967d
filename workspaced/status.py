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


async def chat(dsn: str, chat_id: str) -> dict[str, Any] | None:
    """
    Return one chat's row, its calls (waiting and answered) and its whole history.
    """
    with errors.translated():
        conn = await asyncpg.connect(dsn)
        try:
            row = await conn.fetchrow(sql("show_chat"), chat_id)
            if row is None:
                return None
            calls = await conn.fetch(sql("show_calls"), chat_id)
            history = await conn.fetch(sql("show_history"), chat_id)
        finally:
            await conn.close()
    return {
        "chat": dict(row),
        "calls": [dict(c) for c in calls],
        "history": [dict(h) for h in history],
    }


def chat_text(found: dict[str, Any]) -> str:
    """
    Format what ``chat()`` returned for a person.
    """
    row = found["chat"]
    fields = [(k, v) for k, v in row.items() if v is not None]
    width = max(len(k) for k, _ in fields)
    parts = [f"{k.ljust(width)}  {_when(v)}" for k, v in fields]
    waiting = [c for c in found["calls"] if c["answered_at"] is None]
    parts += ["", f"calls ({len(waiting)} waiting)"]
    parts.append(
        table(
            ["tool_call_id", "creator", "received", "answered", "answer"],
            [
                (
                    c["tool_call_id"],
                    "yes" if c["creator"] else "",
                    c["received_at"],
                    c["answered_at"] or "waiting",
                    _answer(c["answer"]),
                )
                for c in found["calls"]
            ],
        )
    )
    parts += ["", f"history ({len(found['history'])} transitions)"]
    parts.append(
        table(
            ["at", "from", "to", "trigger", "detail"],
            [
                (
                    h["occurred_at"],
                    h["from_state"],
                    h["to_state"],
                    h["trigger"],
                    _detail(h["detail"]),
                )
                for h in found["history"]
            ],
        )
    )
    return "\n".join(parts)


def _when(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _answer(answer: Any) -> str:
    if not isinstance(answer, dict):
        return ""
    content = answer.get("content") or {}
    if answer.get("is_error"):
        return f"error: {content.get('error', '')}"
    return ", ".join(f"{k}={v}" for k, v in content.items())
