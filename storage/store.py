"""
Read and write the state tables inside one transaction per batch of events.

``PostgresStateStore`` is the only writer of ``chat_workspaces``,
``workspace_transitions``, ``tool_calls``, ``outbox``, ``provisioner_jobs``
and ``agents``. Rows are locked in ``chat_id`` order, so instances that lock
overlapping sets of chats wait for each other instead of deadlocking.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg
import orjson

from statemachine import effects
from statemachine.model import AnsweredCall, Chat, ChatWorkspace, Facts, Job, Tool, Waiter
from storage import errors
from storage import rows as pg
from storage.queries import sql

OUTBOX_CHANNEL = "workspaced_outbox"
# (topic, partition, applied_offset, record_time, caught_up_at) of an input partition.
WatermarkRow = tuple[str, int, int, datetime | None, datetime | None]


class DueTimer(NamedTuple):
    """
    Carry a claimed timer; ``unwatermarked`` when a partition ignored as stale was behind it.
    """

    chat_id: str
    version: int
    deadline_at: datetime
    unwatermarked: bool


class StaleWatermark(NamedTuple):
    """
    Describe an input partition whose watermark has not moved since ``updated_at``.
    """

    topic: str
    partition: int
    mark: datetime | None
    updated_at: datetime


async def init_connection(conn: asyncpg.Connection) -> None:
    """
    Decode and encode ``jsonb`` with orjson on ``conn``, as every query here expects.
    """
    await conn.set_type_codec(
        "jsonb", encoder=_jsonb_encode, decoder=orjson.loads, schema="pg_catalog", format="text"
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """
    Skip asyncpg's reset (a round trip per transaction): we keep no session state.

    Every lock we take is transaction-scoped, no cursor outlives its
    transaction, and only the relay's own connection (not from this pool) LISTENs.
    """
    del conn


def _jsonb_encode(value: Any) -> str:
    return orjson.dumps(value).decode()


class StateTransaction:
    """
    Offer the reads and writes of one transaction; made by ``PostgresStateStore``.
    """

    def __init__(self, conn: asyncpg.Connection, topic_name: Callable[[str], str]) -> None:
        self._conn = conn
        self._topic_name = topic_name
        self.outbox_written = 0
        self.earliest_deadline: datetime | None = None
        # Seconds from arrival to answer of each call this transaction answered.
        self.call_seconds: list[float] = []

    async def lock_workspaces(self, workspace_ids: Iterable[str]) -> None:
        """
        Serialise, across instances, the transactions that touch the same workspaces.

        Job updates are keyed by workspace, heartbeats by agent and Coder's
        answers by chat, so one workspace's facts can be handled by several
        instances at once; without this, binding a workspace and applying its
        job update (or its agent's first heartbeat) in two transactions could
        each miss the other. One lock per workspace (a 64-bit hash: batches of
        different workspaces run side by side), sorted, so no two batches deadlock.
        """
        keys = sorted({workspace_lock_key(w) for w in workspace_ids})
        if keys:
            with errors.translated(self._conn):
                await self._conn.fetchval(sql("workspaces_lock"), keys)

    async def claim_inbox(self, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """
        Record (source, id) pairs as handled; return those not handled before.
        """
        if not keys:
            return set()
        with errors.translated(self._conn):
            rows = await self._conn.fetch(
                sql("inbox_claim"), [k[0] for k in keys], [k[1] for k in keys]
            )
        return {(r["source"], r["id"]) for r in rows}

    async def record_heartbeats(
        self, beats: Mapping[str, tuple[str, str | None, datetime]]
    ) -> dict[str, str]:
        """
        Store the latest heartbeat per agent; return {chat_id: agent_id} of chats waiting on them.
        """
        if not beats:
            return {}
        agent_ids = sorted(beats)
        with errors.translated(self._conn):
            await self._conn.execute(
                sql("agents_record"),
                agent_ids,
                [beats[a][0] for a in agent_ids],
                [beats[a][1] for a in agent_ids],
                [beats[a][2] for a in agent_ids],
            )
            rows = await self._conn.fetch(sql("chats_waiting_on_agents"), agent_ids)
        return {r["chat_id"]: r["agent_id"] for r in rows}

    async def lock_jobs(self, job_ids: Iterable[str]) -> dict[str, Job]:
        """
        Lock and return the known jobs among ``job_ids``.
        """
        with errors.translated(self._conn):
            rows = await self._conn.fetch(sql("jobs_lock"), sorted(set(job_ids)))
        return {r["job_id"]: pg.job(r) for r in rows}

    async def save_jobs(self, jobs: Iterable[Job]) -> None:
        """
        Write merged job statuses.
        """
        args = [
            (
                j.job_id,
                j.workspace_id,
                j.build_id,
                j.transition,
                j.status,
                j.error,
                [{"id": a.id, "name": a.name} for a in j.agents],
                j.occurred_at,
            )
            for j in jobs
        ]
        if args:
            with errors.translated(self._conn):
                await self._conn.executemany(sql("jobs_save"), args)

    async def chats_bound_to(self, workspace_ids: Iterable[str]) -> list[tuple[str, str]]:
        """
        Return (chat_id, workspace_id) of the chats bound to any of these workspaces.
        """
        ids = sorted(set(workspace_ids))
        if not ids:
            return []
        with errors.translated(self._conn):
            rows = await self._conn.fetch(sql("chats_bound_to_workspaces"), ids)
        return [(r["chat_id"], r["workspace_id"]) for r in rows]

    async def lock_chats(
        self, chat_ids: Iterable[str], owners: Mapping[str, str], now: datetime
    ) -> dict[str, Chat]:
        """
        Lock the chats (creating rows for new ones in ``owners``) with their waiting calls.

        The calls are read once the rows are locked, so calls another
        transaction added or answered while this one waited are seen as they are now.
        """
        ids = sorted(set(chat_ids))
        if not ids:
            return {}
        with errors.translated(self._conn):
            new = sorted(owners)
            if new:
                await self._conn.execute(
                    sql("chats_create_missing"), new, [owners[c] for c in new], now
                )
            rows = await self._conn.fetch(sql("chats_lock"), ids)
            # A statement of its own, after the locks: see chats_lock.
            waiting = (
                await self._conn.fetch(sql("chats_waiters"), [r["chat_id"] for r in rows])
                if rows
                else []
            )
        waiters = {
            w["chat_id"]: tuple(
                Waiter(i, c, Tool(t))
                for i, c, t in zip(w["tool_call_ids"], w["creators"], w["tools"], strict=True)
            )
            for w in waiting
        }
        return {r["chat_id"]: Chat(pg.row(r), waiters.get(r["chat_id"], ())) for r in rows}

    async def load_facts(
        self,
        job_ids: Iterable[str],
        agent_ids: Iterable[str],
        workspace_ids: Iterable[str],
        tool_call_ids: Iterable[str],
    ) -> Facts:
        """
        Return known jobs, agents' last heartbeats and lifecycles, latest builds and past calls.

        ``calls`` is a plain dict: the fold adds the calls it decides on as it goes.
        """
        jobs: dict[str, Job] = {}
        seen: dict[str, datetime] = {}
        lifecycles: dict[str, str] = {}
        latest: dict[str, Job] = {}
        keys = [list(set(job_ids)), list(set(agent_ids)), list(set(workspace_ids))]
        if any(keys):
            with errors.translated(self._conn):
                rows = await self._conn.fetch(sql("facts"), *keys)
            for r in rows:
                if r["kind"] == "seen":
                    seen[r["job_id"]] = r["occurred_at"]
                    if r["transition"] is not None:
                        lifecycles[r["job_id"]] = r["transition"]
                elif r["kind"] == "job":
                    jobs[r["job_id"]] = pg.job(r)
                else:
                    latest[r["workspace_id"]] = pg.job(r)
        calls = {
            r["tool_call_id"]: AnsweredCall(r["tool_call_id"], r["chat_id"], r["answer"])
            for r in await self._fetch("calls_known", tool_call_ids)
        }
        return Facts(jobs, seen, latest, calls, lifecycles)

    async def _fetch(self, query: str, keys: Iterable[str]) -> list[asyncpg.Record]:
        unique = list(set(keys))
        if not unique:
            return []  # no round trip for nothing
        with errors.translated(self._conn):
            rows: list[asyncpg.Record] = await self._conn.fetch(sql(query), unique)
        return rows

    async def save(
        self,
        chats: Iterable[ChatWorkspace],
        done: Sequence[effects.Effect],
        extra: Sequence[pg.OutboxRecord] = (),
    ) -> None:
        """
        Write changed rows and perform effects (history, calls, outbox) in one statement.
        """
        changed = [pg.row_args(c) for c in chats]
        history: list[tuple[Any, ...]] = []
        calls: dict[str, list[Any]] = {}
        tools: dict[str, str] = {}
        outbox = list(extra)
        for effect in done:
            match effect:
                case effects.RecordTransition():
                    history.append(pg.history_args(effect))
                case effects.Wait():
                    tools.setdefault(effect.tool_call_id, effect.tool.value)
                    calls.setdefault(
                        effect.tool_call_id,
                        [
                            effect.chat_id,
                            effect.creator,
                            effect.event_id,
                            effect.occurred_at,
                            None,
                            None,
                        ],
                    )
                case effects.Answer():
                    tools.setdefault(effect.tool_call_id, effect.tool.value)
                    answer = orjson.dumps({"is_error": effect.is_error, "content": effect.content})
                    call = calls.setdefault(
                        effect.tool_call_id,
                        [effect.chat_id, False, "", effect.occurred_at, None, None],
                    )
                    call[4], call[5] = effect.occurred_at, answer.decode()
                    outbox.append(pg.answer_record(effect, self._topic_name))
                case effects.Publish():
                    outbox.append(pg.publish_record(effect, self._topic_name))
        with errors.translated(self._conn):
            saved = await self._conn.fetchrow(
                sql("batch_save"),
                *pg.columns(changed, 19),
                *pg.columns(history, 8),
                list(calls),
                *pg.columns([tuple(c) for c in calls.values()], 6),
                *pg.outbox_columns(outbox),
                [tools[i] for i in calls],
            )
        self.outbox_written += len(outbox)
        self.call_seconds += list(saved["waited"])
        for row in changed:
            deadline = row[17]
            if deadline is not None and (
                self.earliest_deadline is None or deadline < self.earliest_deadline
            ):
                self.earliest_deadline = deadline

    async def add_outbox(self, records: Sequence[pg.OutboxRecord]) -> None:
        """
        Append records to the outbox and wake the relays when the transaction commits.
        """
        with errors.translated(self._conn):
            await self._conn.execute(sql("outbox_add"), *pg.outbox_columns(records))
            if not self.outbox_written:
                await self._conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
        self.outbox_written += len(records)

    async def claim_due_timers(
        self,
        now: datetime,
        limit: int,
        input_topics: Sequence[str] | None = None,
        stale_before: datetime | None = None,
    ) -> list[DueTimer]:
        """
        Lock up to ``limit`` chats whose deadline has passed, skipping those locked elsewhere.

        With ``input_topics``, only deadlines every partition of those topics
        has applied past (its watermark); a partition whose watermark has not
        moved since ``stale_before`` is not waited for.
        """
        topics = None if input_topics is None else list(input_topics)
        with errors.translated(self._conn):
            rows = await self._conn.fetch(sql("timers_claim"), now, limit, topics, stale_before)
        return [DueTimer(*r) for r in rows]

    async def record_watermarks(self, marks: Sequence[WatermarkRow], now: datetime) -> None:
        """
        Move input partitions' watermarks forward (never back); ``now`` dates those that moved.
        """
        if not marks:
            return
        with errors.translated(self._conn):
            await self._conn.execute(sql("watermarks_record"), *pg.columns(marks, 5), now)

    async def stale_watermarks(
        self, input_topics: Sequence[str], stale_before: datetime
    ) -> list[StaleWatermark]:
        """
        Return the input partitions whose watermark has not moved since ``stale_before``.
        """
        with errors.translated(self._conn):
            rows = await self._conn.fetch(sql("watermarks_stale"), list(input_topics), stale_before)
        return [StaleWatermark(*r) for r in rows]


def workspace_lock_key(workspace_id: str) -> int:
    """
    Return the advisory lock key of a workspace: a stable, signed 64-bit hash of its id.

    Hashed rather than cut from the UUID: the first bytes of a time-ordered
    UUID (v7) are a timestamp, shared by workspaces created in the same instant.
    """
    try:
        raw = uuid.UUID(workspace_id).bytes  # one key whatever the UUID's spelling
    except ValueError:
        raw = workspace_id.encode()
    digest = hashlib.blake2b(raw, digest_size=8, person=b"workspace").digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresStateStore:
    """
    Own the connection pool and hand out one ``StateTransaction`` per batch.
    """

    def __init__(self, pool: asyncpg.Pool, topic_name: Callable[[str], str]) -> None:
        self._pool = pool
        self._topic_name = topic_name

    @classmethod
    async def open(
        cls, dsn: str, topic_name: Callable[[str], str], size: int = 8
    ) -> PostgresStateStore:
        """
        Connect a pool to ``dsn``.
        """
        with errors.translated():
            pool = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=size,
                init=init_connection,
                reset=_keep_session,
                command_timeout=60,
            )
        return cls(pool, topic_name)

    @property
    def pool(self) -> asyncpg.Pool:
        """
        Return the pool, for the relay and the timer scheduler.
        """
        return self._pool

    async def healthy(self, timeout_s: float = 2.0) -> bool:
        """
        Tell whether PostgreSQL answers a trivial query now.
        """
        try:
            async with asyncio.timeout(timeout_s):
                await self._pool.fetchval("SELECT 1")
        except Exception:  # noqa: BLE001 - any failure means "not healthy"
            return False
        return True

    async def close(self) -> None:
        """
        Close every connection.
        """
        with errors.translated():
            await self._pool.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[StateTransaction]:
        """
        Run the block in one transaction; commit when it ends without error.
        """
        with errors.translated():
            async with self._pool.acquire() as conn:
                # Inside: a backend that died mid-transaction shows in ``conn``,
                # whatever error asyncpg's rollback raises instead.
                with errors.translated(conn):
                    async with conn.transaction():
                        yield StateTransaction(conn, self._topic_name)


async def next_deadline(pool: asyncpg.Pool) -> datetime | None:
    """
    Return the earliest deadline of any chat, or None when no timer is set.
    """
    with errors.translated():
        value: datetime | None = await pool.fetchval(sql("timers_next"))
    return value
