"""
Delete what retention no longer keeps, a small batch per statement.

Without this, ``inbox``, ``tool_calls``, ``workspace_transitions``, ``agents``
and ``provisioner_jobs`` grow with every event ever handled. Each statement
deletes at most ``batch`` rows and commits on its own, so pruning never holds
locks that the handler's transactions would wait on for long.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from storage import errors
from storage.queries import sql


async def prune(  # noqa: PLR0913 - keyword-only: one cut-off per kind of row
    pool: asyncpg.Pool,
    *,
    inbox_before: datetime,
    calls_before: datetime,
    history_before: datetime,
    facts_before: datetime,
    batch: int = 1000,
) -> dict[str, int]:
    """
    Delete rows past their retention; return how many went, per table.

    - ``inbox``: event ids received before ``inbox_before``; a duplicate
      redelivered after that is handled again.
    - ``tool_calls``: calls answered before ``calls_before``; a call
      redelivered (same id, new event id) after that is taken as a new call.
      Keep it at least as long as the inbox. Waiting calls are never deleted.
    - ``workspace_transitions``: the history of chats ``failed`` or ``none``
      and not updated since ``history_before``.
    - ``agents``, ``provisioner_jobs``: heartbeats not seen, and jobs not
      updated, since ``facts_before``, of agents and workspaces no chat is
      bound to. Keep it well above every timeout.
    """
    steps = (
        ("inbox", "prune_inbox", inbox_before),
        ("tool_calls", "prune_tool_calls", calls_before),
        ("workspace_transitions", "prune_transitions", history_before),
        ("agents", "prune_agents", facts_before),
        ("provisioner_jobs", "prune_jobs", facts_before),
    )
    pruned: dict[str, int] = {}
    for table, query, before in steps:
        pruned[table] = 0
        while True:
            with errors.translated():
                status: str = await pool.execute(sql(query), before, batch)
            deleted = int(status.rpartition(" ")[2])  # "DELETE <n>"
            pruned[table] += deleted
            if deleted < batch:
                break
    return pruned
