"""
Lease the workspaces the Coder bridge watches, so each is watched by one instance at a time.

The rows follow ``chat_workspaces``: every workspace a chat is bound to gets
one; one no chat is bound to any more loses it. An instance renews its leases
every few seconds; a dead instance's leases expire and the others take them.
Each instance takes at most its fair share (the watches divided by the live
instances, rounded up), so a new instance gets watches as the others' shares
shrink and their extra leases run out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import asyncpg

from storage import errors
from storage.queries import sql


class PostgresWatchLeases:
    """
    Claim, renew, add and release watch leases for one bridge instance.
    """

    def __init__(self, pool: asyncpg.Pool, owner: str, lease_s: float) -> None:
        self._pool = pool
        self._owner = owner
        self._lease_s = lease_s

    async def sync(self, grace_s: float) -> tuple[int, int]:
        """
        Add watches for newly bound workspaces and drop unbound ones; return (added, dropped).
        """
        with errors.translated():
            row = await self._pool.fetchrow(sql("watches_sync"), grace_s)
        return int(row["added"]), int(row["dropped"])

    async def claim(self, most: int) -> set[str]:
        """
        Renew this instance's leases and take free ones, up to a fair share; return all held.
        """
        with errors.translated():
            async with self._pool.acquire() as conn:
                found = await conn.fetchrow(sql("watches_share"), self._owner)
                share = math.ceil(int(found["total"]) / (int(found["others"]) + 1))
                share = min(most, max(1, share))
                rows = await conn.fetch(sql("watches_claim"), self._owner, self._lease_s, share)
        return {r["workspace_id"] for r in rows}

    async def add(self, workspace_id: str) -> bool:
        """
        Watch a workspace this instance just created; False when another instance holds it.
        """
        with errors.translated():
            status: str = await self._pool.execute(
                sql("watches_add"), workspace_id, self._owner, self._lease_s
            )
        return status.endswith(" 1")

    async def forget(self, workspace_ids: Sequence[str]) -> None:
        """
        Stop watching workspaces for good (deleted in Coder).
        """
        if workspace_ids:
            with errors.translated():
                await self._pool.execute(sql("watches_forget"), list(workspace_ids))

    async def release(self) -> None:
        """
        Give every lease of this instance back, so others take them at once.
        """
        with errors.translated():
            await self._pool.execute(sql("watches_release"), self._owner)
