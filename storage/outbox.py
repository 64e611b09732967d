"""
Give the relay its rows: the PostgreSQL side of ``consumers.relay.OutboxSource``.

Leadership is a session advisory lock on a dedicated connection, which also
LISTENs for the NOTIFY every committing transaction with outbox rows sends.
The leader reads and deletes rows on that same connection, and each of those
statements checks that its session still holds the lock: a leader that lost
its session (killed, or dropped by the server after a network failure it has
not noticed yet) can neither read nor delete, so it cannot publish beside the
instance that took over. If the leader dies, its connection closes, the lock
is released and another instance's relay takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import asyncpg

from storage import errors, store
from storage.queries import sql
from storage.rows import ClaimedRecord, OutboxRecord, decode_headers

_LEADER_KEY = 0x6F7574  # "out"

# TCP keepalives on both ends of the leader's connection: the server frees
# the lock of a leader whose host vanished, and a leader whose server (or
# network) vanished sees its connection close, in about 25 s instead of the
# kernel's two hours. The user timeout does the same for data sent and never
# acknowledged, where keepalives do not apply.
_KEEPALIVE_IDLE_S = 10
_KEEPALIVE_INTERVAL_S = 5
_KEEPALIVE_PROBES = 3
_USER_TIMEOUT_MS = 25_000
# A statement on the leader's connection that hangs this long means the
# connection is gone; the relay then asks for the lead again.
_STATEMENT_TIMEOUT_S = 30.0


class PostgresOutbox:
    """
    Read, delete and lead the outbox.
    """

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        # The pool is no longer used: rows are read and deleted on the
        # leader's own connection. Kept so callers need not change yet.
        del pool
        self._dsn = dsn
        self._leader: asyncpg.Connection | None = None

    @contextlib.asynccontextmanager
    async def leadership(
        self, wake: asyncio.Event, stop: asyncio.Event
    ) -> AsyncIterator[Callable[[], bool]]:
        """
        Hold the relay lock for as long as the block runs.

        The lease says whether this instance still leads: false once the
        lock's connection closed. ``fetch`` and ``delete`` raise
        ``StorageUnavailableError`` when it does not.
        """
        with errors.translated():
            conn = await asyncpg.connect(
                self._dsn,
                command_timeout=_STATEMENT_TIMEOUT_S,
                server_settings={
                    "tcp_keepalives_idle": str(_KEEPALIVE_IDLE_S),
                    "tcp_keepalives_interval": str(_KEEPALIVE_INTERVAL_S),
                    "tcp_keepalives_count": str(_KEEPALIVE_PROBES),
                    "tcp_user_timeout": str(_USER_TIMEOUT_MS),
                },
            )
        try:
            with errors.translated(conn):
                _keep_alive(conn)
                await store.init_connection(conn)
                await conn.add_listener(store.OUTBOX_CHANNEL, lambda *_: wake.set())
                # A standby asks once a second (one cheap statement, not per
                # chat): an advisory lock has no wake-up to wait on.
                while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LEADER_KEY):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)
                    if stop.is_set():
                        break
                else:
                    self._leader = conn
            wake.set()
            # The lock lives as long as this connection: lose one, lose both.
            yield lambda: not conn.is_closed() and self._leader is conn
        finally:
            if self._leader is conn:
                self._leader = None
            with contextlib.suppress(Exception):
                await conn.close()

    async def fetch(self, limit: int) -> Sequence[ClaimedRecord]:
        """
        Return the oldest rows, in id order, while this instance leads.
        """
        conn = self._leading()
        with errors.translated(conn):
            rows = await conn.fetch(sql("outbox_claim"), limit, _LEADER_KEY)
        if not rows or not rows[0]["held"]:
            raise errors.StorageUnavailableError("the relay lock is no longer held")
        claimed = [ClaimedRecord(r["id"], _record(r)) for r in rows if r["id"] is not None]
        claimed.sort(key=lambda c: c.id)  # see outbox_claim; linear on sorted input
        return claimed

    async def delete(self, ids: Sequence[int]) -> None:
        """
        Forget rows the broker acknowledged, while this instance leads.
        """
        conn = self._leading()
        with errors.translated(conn):
            held = await conn.fetchval(sql("outbox_delete"), list(ids), _LEADER_KEY)
        if not held:
            raise errors.StorageUnavailableError("the relay lock is no longer held")

    async def park(self, ids: Sequence[int], error: str) -> None:
        """
        Move rows the broker refused for good to ``outbox_parked``, with its error.
        """
        conn = self._leading()
        with errors.translated(conn):
            held = await conn.fetchval(sql("outbox_park"), list(ids), error, _LEADER_KEY)
        if not held:
            raise errors.StorageUnavailableError("the relay lock is no longer held")

    def _leading(self) -> asyncpg.Connection:
        if self._leader is None:
            raise errors.StorageUnavailableError("this instance does not lead the relay")
        return self._leader


def _keep_alive(conn: asyncpg.Connection) -> None:
    """
    Set client-side TCP keepalives on ``conn``; asyncpg sets none.
    """
    # asyncpg has no public way to reach its socket, nor an option for this.
    sock = conn._transport.get_extra_info("socket")  # noqa: SLF001
    if sock is None or sock.family not in {socket.AF_INET, socket.AF_INET6}:
        return  # a Unix socket: no network to lose
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", _KEEPALIVE_IDLE_S),
        ("TCP_KEEPINTVL", _KEEPALIVE_INTERVAL_S),
        ("TCP_KEEPCNT", _KEEPALIVE_PROBES),
        ("TCP_USER_TIMEOUT", _USER_TIMEOUT_MS),
    ):
        if hasattr(socket, option):  # Linux has all four; other systems some
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


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


async def leader_known(pool: asyncpg.Pool) -> bool:
    """
    Tell whether some instance leads the relay now (holds its advisory lock).
    """
    with errors.translated():
        held: bool = await pool.fetchval(sql("relay_leader_known"), _LEADER_KEY)
    return held
