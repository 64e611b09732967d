"""
The storage defects of issue 14, each reproduced on real PostgreSQL.

Interleavings are made deterministic by holding row locks from a test
connection and waiting until PostgreSQL reports the other side blocked on
them (``pg_blocking_pids``), never by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from statemachine.model import Waiter
from storage import errors, retention, rows, store
from storage.outbox import PostgresOutbox
from storage.store import PostgresStateStore

_LEADER_KEY = 0x6F7574  # storage/outbox.py: the relay's advisory lock


def _topic(name: str) -> str:
    return f"test.{name}"


async def _until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """
    Poll ``condition`` until it holds; fail after a generous deadline.
    """
    try:
        async with asyncio.timeout(20):
            while not await condition():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


def _blocked(db: asyncpg.Connection, pid: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(await db.fetchval("SELECT cardinality(pg_blocking_pids($1)) > 0", pid))

    return check


def _gone(db: asyncpg.Connection, pid: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not await db.fetchval(
            "SELECT count(*) FROM pg_stat_get_activity($1) WHERE pid IS NOT NULL", pid
        )

    return check


@pytest.fixture
async def state(database_url: str) -> AsyncIterator[PostgresStateStore]:
    opened = await PostgresStateStore.open(database_url, _topic, size=4)
    yield opened
    await opened.close()


@pytest.fixture
async def holder(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """
    Give a second test connection: the "other instance" that holds locks.
    """
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


def _server_pid(tx: store.StateTransaction) -> int:
    pid: int = tx._conn.get_server_pid()
    return pid


# 1. A closed connection is an outage, not a poison record ------------------


async def test_a_transaction_whose_backend_is_terminated_midway_is_unavailable_not_permanent(
    state: PostgresStateStore, db: asyncpg.Connection
) -> None:
    async def batch() -> None:
        async with state.transaction() as tx:
            await tx.claim_inbox([("test", "before")])
            pid = _server_pid(tx)
            await db.execute("SELECT pg_terminate_backend($1)", pid)
            await _until(_gone(db, pid), "the backend exited")
            await tx.claim_inbox([("test", "after")])

    with pytest.raises(errors.StorageUnavailableError):
        await batch()
    # The pool replaced the dead connection; nothing of the batch was kept.
    async with state.transaction() as tx:
        assert await tx.claim_inbox([("test", "before")]) == {("test", "before")}


async def test_an_error_whose_rollback_finds_the_connection_closed_is_unavailable(
    state: PostgresStateStore, db: asyncpg.Connection
) -> None:
    # The block fails for its own reason; asyncpg's rollback then meets the
    # closed connection and raises InterfaceError with the first error as context.
    async def batch() -> None:
        async with state.transaction() as tx:
            pid = _server_pid(tx)
            await db.execute("SELECT pg_terminate_backend($1)", pid)
            await _until(_gone(db, pid), "the backend exited")
            await _until(_closed(tx), "the client saw the connection close")
            raise ValueError("the handler failed while the connection was gone")

    with pytest.raises(errors.StorageUnavailableError):
        await batch()


def _closed(tx: store.StateTransaction) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(tx._conn.is_closed())

    return check


# 6. A read-only database is an outage ---------------------------------------


async def test_a_write_to_a_read_only_database_is_unavailable(
    database_url: str, db: asyncpg.Connection
) -> None:
    name = await db.fetchval("SELECT current_database()")
    await db.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    read_only = await PostgresStateStore.open(database_url, _topic)
    try:
        with pytest.raises(errors.StorageUnavailableError, match="ReadOnlySQLTransaction"):
            await _claim(read_only, ("test", "one"))
    finally:
        await read_only.close()


async def _claim(state: PostgresStateStore, key: tuple[str, str]) -> None:
    async with state.transaction() as tx:
        await tx.claim_inbox([key])


# 2. Waiting calls are read after the chat rows are locked -------------------


async def _building_chat(db: asyncpg.Connection, *waiting: str) -> str:
    chat = str(uuid.uuid4())
    await db.execute(
        "INSERT INTO chat_workspaces (chat_id, owner_id, state, state_entered_at, created_at,"
        " updated_at) VALUES ($1, $2, 'building', now(), now(), now())",
        chat,
        str(uuid.uuid4()),
    )
    for i, call in enumerate(waiting):
        await _add_call(db, chat, call, creator=i == 0)
    return chat


async def _add_call(db: asyncpg.Connection, chat: str, call: str, *, creator: bool) -> None:
    await db.execute(
        "INSERT INTO tool_calls (tool_call_id, chat_id, creator, event_id, received_at)"
        " VALUES ($1, $2, $3, $1, clock_timestamp())",
        call,
        chat,
        creator,
    )


async def _lock_behind(
    state: PostgresStateStore,
    db: asyncpg.Connection,
    holder: asyncpg.Connection,
    chat: str,
    change: Callable[[], Awaitable[object]],
) -> tuple[Waiter, ...]:
    """
    Let ``holder`` lock the chat and ``change`` its calls while a store transaction waits on it.
    """
    async with state.transaction() as tx:
        async with holder.transaction():
            await holder.execute(
                "SELECT 1 FROM chat_workspaces WHERE chat_id = $1 FOR UPDATE", chat
            )
            await change()
            locking = asyncio.create_task(tx.lock_chats([chat], {}, datetime.now(UTC)))
            await _until(_blocked(db, _server_pid(tx)), "the store waits on the chat's lock")
        chats = await locking
    return chats[chat].waiters


async def test_a_call_added_by_another_instance_while_the_chat_was_locked_is_seen_waiting(
    state: PostgresStateStore, db: asyncpg.Connection, holder: asyncpg.Connection
) -> None:
    chat = await _building_chat(db, "w1")
    waiters = await _lock_behind(
        state, db, holder, chat, lambda: _add_call(holder, chat, "w2", creator=False)
    )
    assert waiters == (Waiter("w1", creator=True), Waiter("w2", creator=False))


async def test_a_call_answered_while_the_chat_was_locked_is_no_longer_seen_waiting(
    state: PostgresStateStore, db: asyncpg.Connection, holder: asyncpg.Connection
) -> None:
    chat = await _building_chat(db, "w1", "w2")
    waiters = await _lock_behind(
        state,
        db,
        holder,
        chat,
        lambda: holder.execute(
            "UPDATE tool_calls SET answered_at = now(), answer = '{}' WHERE tool_call_id = 'w1'"
        ),
    )
    assert waiters == (Waiter("w2", creator=False),)


async def test_locking_chats_returns_their_waiting_calls_oldest_first(
    state: PostgresStateStore, db: asyncpg.Connection
) -> None:
    busy = await _building_chat(db, "c", "a", "b")
    idle = await _building_chat(db)
    async with state.transaction() as tx:
        chats = await tx.lock_chats([idle, busy], {}, datetime.now(UTC))
    assert chats[busy].waiters == (
        Waiter("c", creator=True),
        Waiter("a", creator=False),
        Waiter("b", creator=False),
    )
    assert chats[idle].waiters == ()


# 3. Dead letters' headers are stored whatever they hold --------------------


@contextlib.asynccontextmanager
async def _leading(outbox: PostgresOutbox) -> AsyncIterator[Callable[[], bool]]:
    async with outbox.leadership(asyncio.Event(), asyncio.Event()) as lease:
        yield lease


async def test_dead_letter_headers_with_null_values_nul_and_any_bytes_round_trip_exactly(
    state: PostgresStateStore, database_url: str
) -> None:
    headers: tuple[tuple[str, bytes | None], ...] = (
        ("traceparent", b"00-abc-01"),
        ("null-value", None),
        ("nul\x00in the name", b"\x00nul\x00in the value"),
        ("dlq_\x00", b"\xff\xfe not utf-8 \x80"),
        ("", b""),
        ("traceparent", b"repeated names are kept, in order"),
        ("caf\u00e9 \U0001f600", b"\xc3\xa9"),
        ("lone surrogate \udcff", None),
    )
    record = rows.OutboxRecord(
        "test.dead_letters",
        b"\x00key",
        str(uuid.uuid4()),
        "",
        datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        b"\x00\xffvalue",
        headers,
    )
    async with state.transaction() as tx:
        await tx.add_outbox([record])
    outbox = PostgresOutbox(state.pool, database_url)
    async with _leading(outbox):
        (claimed,) = await outbox.fetch(10)
    assert claimed.record == record


async def test_an_outbox_row_written_in_the_earlier_header_format_still_decodes(
    state: PostgresStateStore, database_url: str, db: asyncpg.Connection
) -> None:
    await db.execute(
        "INSERT INTO outbox (topic, key, ce_id, ce_type, ce_time, payload, headers)"
        " VALUES ('t', NULL, 'id', '', now(), NULL, '[[\"a\", \"AP8=\"], [\"b\", \"\"]]')"
    )
    outbox = PostgresOutbox(state.pool, database_url)
    async with _leading(outbox):
        (claimed,) = await outbox.fetch(10)
    assert claimed.record.headers == (("a", b"\x00\xff"), ("b", b""))


# 9. Only the relay leader's own session reads and deletes the outbox ------


async def _add_one(state: PostgresStateStore) -> None:
    record = rows.OutboxRecord("t", None, str(uuid.uuid4()), "", datetime.now(UTC), b"{}")
    async with state.transaction() as tx:
        await tx.add_outbox([record])


async def _leader_pid(db: asyncpg.Connection) -> int | None:
    pid: int | None = await db.fetchval(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND classid = 0 AND objid = $1 AND objsubid = 1",
        _LEADER_KEY,
    )
    return pid


async def test_a_relay_leader_whose_session_was_terminated_can_neither_read_nor_delete(
    state: PostgresStateStore, database_url: str, db: asyncpg.Connection
) -> None:
    await _add_one(state)
    old, new = PostgresOutbox(state.pool, database_url), PostgresOutbox(state.pool, database_url)
    stop, took_over = asyncio.Event(), asyncio.Event()

    async def stand_by() -> list[int]:
        async with new.leadership(asyncio.Event(), stop) as lease:
            took_over.set()
            assert lease()
            ids = [c.id for c in await new.fetch(10)]
            await stop.wait()
            return ids

    async with _leading(old) as lease:
        (claimed,) = await old.fetch(10)
        standby = asyncio.create_task(stand_by())
        pid = await _leader_pid(db)
        assert pid is not None
        await db.execute("SELECT pg_terminate_backend($1)", pid)
        await _until(_gone(db, pid), "the leader's backend exited")
        await _until(_not(lease), "the old leader's lease ended")
        with pytest.raises(errors.StorageUnavailableError):
            await old.fetch(10)
        with pytest.raises(errors.StorageUnavailableError):
            await old.delete([claimed.id])
        await _until(_is_set(took_over), "the standby took the lead")
    stop.set()
    assert await standby == [claimed.id]
    assert await db.fetchval("SELECT count(*) FROM outbox") == 1


async def test_a_relay_leader_that_no_longer_holds_the_lock_can_neither_read_nor_delete(
    state: PostgresStateStore, database_url: str
) -> None:
    await _add_one(state)
    outbox = PostgresOutbox(state.pool, database_url)
    async with _leading(outbox):
        (claimed,) = await outbox.fetch(10)
        # As behind a transaction-pooling proxy: the session is not the one that locked.
        await outbox._leader.execute("SELECT pg_advisory_unlock_all()")
        with pytest.raises(errors.StorageUnavailableError):
            await outbox.fetch(10)
        with pytest.raises(errors.StorageUnavailableError):
            await outbox.delete([claimed.id])


async def test_an_instance_that_does_not_lead_the_relay_cannot_read_the_outbox(
    state: PostgresStateStore, database_url: str
) -> None:
    await _add_one(state)
    with pytest.raises(errors.StorageUnavailableError):
        await PostgresOutbox(state.pool, database_url).fetch(10)


async def test_the_relay_leaders_connection_sets_client_side_tcp_keepalives(
    state: PostgresStateStore, database_url: str
) -> None:
    outbox = PostgresOutbox(state.pool, database_url)
    async with _leading(outbox):
        sock = outbox._leader._transport.get_extra_info("socket")
        if sock.family == socket.AF_UNIX:
            pytest.fail("the test server must be reached over TCP")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; other systems name it otherwise
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10


def _not(lease: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not lease()

    return check


def _is_set(event: asyncio.Event) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return event.is_set()

    return check


# Also: workspaces lock one key each, not one of 512 buckets ----------------


async def test_two_batches_of_disjoint_workspaces_hold_their_locks_at_the_same_time(
    state: PostgresStateStore, db: asyncpg.Connection
) -> None:
    first = [str(uuid.uuid4()) for _ in range(100)]
    second = [str(uuid.uuid4()) for _ in range(100)]
    locked, blocked = asyncio.Event(), False
    pids: list[int] = []

    async def other_instance() -> None:
        async with state.transaction() as tx:
            pids.append(_server_pid(tx))
            await tx.lock_workspaces(second)
            locked.set()

    async with state.transaction() as tx:
        await tx.lock_workspaces(first)
        task = asyncio.create_task(other_instance())

        async def settled() -> bool:
            nonlocal blocked
            blocked = bool(pids) and await _blocked(db, pids[0])()
            return blocked or locked.is_set()

        await _until(settled, "the second batch either locked or waited")
    await task
    assert not blocked, "the second batch waited for the first one's locks"


async def test_batches_that_share_a_workspace_still_wait_for_each_other(
    state: PostgresStateStore, db: asyncpg.Connection
) -> None:
    shared = str(uuid.uuid4())
    pids: list[int] = []

    async def other_instance() -> None:
        async with state.transaction() as tx:
            pids.append(_server_pid(tx))
            await tx.lock_workspaces([str(uuid.uuid4()), shared])

    async with state.transaction() as tx:
        await tx.lock_workspaces([shared])
        task = asyncio.create_task(other_instance())
        await _until(lambda: _has_pid_and(pids, db), "the second batch waits")
    await task


async def _has_pid_and(pids: list[int], db: asyncpg.Connection) -> bool:
    return bool(pids) and await _blocked(db, pids[0])()


# Also: retention ------------------------------------------------------------


_NOW = datetime.now(UTC)
_OLD = _NOW - timedelta(days=30)
_CUT = _NOW - timedelta(days=7)


async def _chat(db: asyncpg.Connection, state_name: str, updated_at: datetime, **bound: str) -> str:
    chat = str(uuid.uuid4())
    await db.execute(
        "INSERT INTO chat_workspaces (chat_id, owner_id, state, state_entered_at, created_at,"
        " updated_at, workspace_id, agent_id) VALUES ($1, $1, $2, $3, $3, $3, $4, $5)",
        chat,
        state_name,
        updated_at,
        bound.get("workspace_id"),
        bound.get("agent_id"),
    )
    for version in (1, 2):
        await db.execute(
            "INSERT INTO workspace_transitions (chat_id, from_state, to_state, trigger, event_id,"
            " version, occurred_at) VALUES ($1, 'none', $2, 't', 'e', $3, $4)",
            chat,
            state_name,
            version,
            updated_at,
        )
    return chat


async def _transitions_of(db: asyncpg.Connection) -> set[str]:
    found = await db.fetch("SELECT DISTINCT chat_id::text FROM workspace_transitions")
    return {r[0] for r in found}


async def _seed_calls(db: asyncpg.Connection, chat: str) -> None:
    for i in range(5):  # more than a batch: pruning goes on until nothing is left
        await db.execute(
            "INSERT INTO tool_calls (tool_call_id, chat_id, event_id, received_at, answered_at,"
            " answer) VALUES ($1, $2, $1, $3, $3, '{}')",
            f"old-answered-{i}",
            chat,
            _OLD,
        )
    await db.execute(
        "INSERT INTO tool_calls (tool_call_id, chat_id, event_id, received_at, answered_at,"
        " answer) VALUES ('new-answered', $1, 'e', $2, $2, '{}'),"
        " ('old-waiting', $1, 'e', $3, NULL, NULL)",
        chat,
        _NOW,
        _OLD,
    )


async def _seed_facts(db: asyncpg.Connection) -> dict[str, str]:
    ids = {k: str(uuid.uuid4()) for k in ("bound_ws", "free_ws", "bound_agent", "free_agent")}
    ids["fresh_agent"] = str(uuid.uuid4())
    for agent, seen in (
        (ids["bound_agent"], _OLD),
        (ids["free_agent"], _OLD),
        (ids["fresh_agent"], _NOW),
    ):
        await db.execute(
            "INSERT INTO agents (agent_id, workspace_id, last_seen_at) VALUES ($1, $2, $3)",
            agent,
            ids["free_ws"],
            seen,
        )
    for job, workspace, updated in (
        ("bound_job", ids["bound_ws"], _OLD),
        ("free_job", ids["free_ws"], _OLD),
        ("fresh_job", ids["free_ws"], _NOW),
    ):
        ids[job] = str(uuid.uuid4())
        await db.execute(
            "INSERT INTO provisioner_jobs (job_id, workspace_id, build_id, transition, status,"
            " occurred_at, updated_at) VALUES ($1, $2, $1, 'start', 'succeeded', $3, $3)",
            ids[job],
            workspace,
            updated,
        )
    return ids


async def test_pruning_removes_only_rows_past_their_retention_that_nothing_needs(
    state: PostgresStateStore, db: asyncpg.Connection
) -> None:
    facts = await _seed_facts(db)
    old_failed = await _chat(db, "failed", _OLD)
    old_none = await _chat(db, "none", _OLD)
    new_failed = await _chat(db, "failed", _NOW)
    old_ready = await _chat(
        db, "ready", _OLD, workspace_id=facts["bound_ws"], agent_id=facts["bound_agent"]
    )
    await _seed_calls(db, old_ready)
    await db.execute(
        "INSERT INTO inbox (source, id, received_at) VALUES ('s', 'old', $1), ('s', 'new', $2)",
        _OLD,
        _NOW,
    )

    pruned = await retention.prune(
        state.pool,
        inbox_before=_CUT,
        calls_before=_CUT,
        history_before=_CUT,
        facts_before=_CUT,
        batch=2,
    )

    assert pruned == {
        "inbox": 1,
        "tool_calls": 5,
        "workspace_transitions": 4,
        "agents": 1,
        "provisioner_jobs": 1,
    }
    assert [r[0] for r in await db.fetch("SELECT id FROM inbox")] == ["new"]
    calls = {r[0] for r in await db.fetch("SELECT tool_call_id FROM tool_calls")}
    assert calls == {"new-answered", "old-waiting"}
    assert await _transitions_of(db) == {new_failed, old_ready}
    assert old_failed not in await _transitions_of(db)
    assert old_none not in await _transitions_of(db)
    agents = {r[0] for r in await db.fetch("SELECT agent_id::text FROM agents")}
    assert agents == {facts["bound_agent"], facts["fresh_agent"]}
    jobs = {r[0] for r in await db.fetch("SELECT job_id::text FROM provisioner_jobs")}
    assert jobs == {facts["bound_job"], facts["fresh_job"]}


async def test_pruning_nothing_deletes_nothing(state: PostgresStateStore) -> None:
    pruned = await retention.prune(
        state.pool, inbox_before=_CUT, calls_before=_CUT, history_before=_CUT, facts_before=_CUT
    )
    assert set(pruned.values()) == {0}


async def test_state_durations_cover_only_the_recent_window(db: asyncpg.Connection) -> None:
    recent = await _chat(db, "building", _NOW)
    await _chat(db, "building", _OLD)
    await db.execute(
        "UPDATE workspace_transitions SET occurred_at = occurred_at + interval '1 minute'"
        " WHERE chat_id = $1 AND version = 2",
        recent,
    )
    (row,) = await db.fetch("SELECT * FROM workspace_state_durations")
    assert (row["state"], row["samples"]) == ("none", 1)
    assert row["p50_seconds"] == pytest.approx(60)
    assert list(row.keys()) == ["state", "samples", "p50_seconds", "p95_seconds"]
