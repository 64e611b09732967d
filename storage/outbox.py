"""
Give the relay its rows: the PostgreSQL side of ``consumers.relay.OutboxSource``.

Leadership is a session advisory lock on a dedicated connection, which also
LISTENs for the NOTIFY every committing transaction with outbox rows sends.
If the leader dies, its connection closes, the lock is released and another
instance's relay takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import asyncpg

from storage import errors
from storage.queries import sql
from storage.rows import ClaimedRecord, OutboxRecord, decode_headers
from storage.store import OUTBOX_CHANNEL

_LEADER_KEY = 0x6F7574  # "out"


class PostgresOutbox:
    """
    Read, delete and lead the outbox.
    """

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self._pool = pool
        self._dsn = dsn

    @contextlib.asynccontextmanager
    async def leadership(
        self, wake: asyncio.Event, stop: asyncio.Event
    ) -> AsyncIterator[Callable[[], bool]]:
        """
        Hold the relay lock for as long as the block runs.
        """
        with errors.translated():
            # Keepalives make the server notice a vanished leader (and free its
            # lock) in about 30 s instead of the kernel's two hours.
            conn = await asyncpg.connect(
                self._dsn,
                server_settings={
                    "tcp_keepalives_idle": "10",
                    "tcp_keepalives_interval": "5",
                    "tcp_keepalives_count": "3",
                },
            )
        try:
            with errors.translated():
                await conn.add_listener(OUTBOX_CHANNEL, lambda *_: wake.set())
                # A standby asks once a second (one cheap statement, not per
                # chat): an advisory lock has no wake-up to wait on.
                while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LEADER_KEY):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)
                    if stop.is_set():
                        break
            wake.set()
            # The lock lives as long as this connection: lose one, lose both.
            yield lambda: not conn.is_closed()
        finally:
            with contextlib.suppress(Exception):
                await conn.close()

    async def fetch(self, limit: int) -> Sequence[ClaimedRecord]:
        """
        Return the oldest rows, in id order.
        """
        with errors.translated():
            rows = await self._pool.fetch(sql("outbox_claim"), limit)
        return [ClaimedRecord(r["id"], _record(r)) for r in rows]

    async def delete(self, ids: Sequence[int]) -> None:
        """
        Forget rows the broker acknowledged.
        """
        with errors.translated():
            await self._pool.execute(sql("outbox_delete"), list(ids))


def _record(row: Any) -> OutboxRecord:
    return OutboxRecord(
        row["topic"],
        row["key"],
        row["ce_id"],
        row["ce_type"],
        row["ce_time"],
        row["payload"],
        decode_headers(row["headers"]),
    )
