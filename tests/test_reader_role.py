"""
The ``workspaced_reader`` role of migration 0005: it reads the state and the views, nothing else.

Roles belong to the server, not to one database: each test makes its own
login (granted ``workspaced_reader``) and drops it afterwards. The helpers
here also seed chats for the dashboard and Grafana tests.
"""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
import pytest

from storage import migrate
from tests.conftest import Services

READER = "workspaced_reader"
VIEWS = (
    "workspace_state_counts",
    "workspace_stuck_chats",
    "workspace_state_durations",
    "workspace_stale_agents",
    "outbox_parked_summary",
)


def _as_login(database_url: str, user: str, password: str) -> str:
    parts = urlsplit(database_url)
    where = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{where}"))


@contextlib.asynccontextmanager
async def reader_login(database_url: str) -> AsyncIterator[str]:
    """
    Make a login granted workspaced_reader, as docs/dashboard.md says; yield its URL.
    """
    name, password = f"reader_{uuid.uuid4().hex[:10]}", secrets.token_hex(12)
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        await admin.execute(f"GRANT {READER} TO {name}")
        yield _as_login(database_url, name, password)
    finally:
        await admin.execute(f"DROP ROLE IF EXISTS {name}")
        await admin.close()


@pytest.fixture
async def reader(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    async with reader_login(database_url) as url:
        conn = await asyncpg.connect(url)
        yield conn
        await conn.close()


async def seed_chat(
    db: asyncpg.Connection,
    steps: Sequence[tuple[str, str, float]],
    *,
    ended_s_ago: float = 1.0,
    chat_id: str | None = None,
    reason: str | None = None,
    **columns: Any,
) -> str:
    """
    Write a chat and its history as the daemon does: one transaction, then a NOTIFY.

    ``steps`` are (trigger, to_state, seconds since the previous step); the
    last one happened ``ended_s_ago`` seconds ago and carries ``reason``.
    """
    chat_id = chat_id or str(uuid.uuid4())
    now = datetime.now(UTC)
    at = now - timedelta(seconds=ended_s_ago + sum(s for _, _, s in steps))
    state, entered, rows = "none", at, []
    for version, (trigger, to_state, after_s) in enumerate(steps, 1):
        at += timedelta(seconds=after_s)
        detail = {"reason": reason} if reason and version == len(steps) else {}
        rows.append((chat_id, state, to_state, trigger, f"seed-{version}", version, at, detail))
        entered = entered if to_state == state else at
        state = to_state
    row = {
        "chat_id": chat_id,
        "owner_id": str(uuid.uuid4()),
        "state": state,
        "state_entered_at": entered,
        "version": len(steps),
        "created_at": rows[0][6] if rows else now,
        "updated_at": at,
    } | columns
    names = ", ".join(row)
    marks = ", ".join(f"${i}" for i in range(1, len(row) + 1))
    async with db.transaction():
        await db.execute(
            f"INSERT INTO chat_workspaces ({names}) VALUES ({marks})",  # noqa: S608 - our column names
            *row.values(),
        )
        await db.executemany(
            "INSERT INTO workspace_transitions (chat_id, from_state, to_state, trigger, event_id,"
            " version, occurred_at, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)",
            [(*r[:7], orjson.dumps(r[7]).decode()) for r in rows],
        )
        await db.execute("SELECT pg_notify('workspaced_outbox', '')")
    return chat_id


async def seed_call(db: asyncpg.Connection, chat_id: str, *, answered: bool) -> str:
    call_id = f"call_{uuid.uuid4().hex[:12]}"
    now = datetime.now(UTC)
    await db.execute(
        "INSERT INTO tool_calls (tool_call_id, chat_id, creator, event_id, received_at,"
        " answered_at, answer) VALUES ($1, $2, true, 'e', $3, $4, $5::jsonb)",
        call_id,
        chat_id,
        now,
        now if answered else None,
        '{"is_error": false, "content": {"secret": "what the user typed"}}' if answered else None,
    )
    return call_id


TO_READY = (
    ("tool_call", "creating", 0.0),
    ("create_accepted", "building", 2.0),
    ("build_succeeded", "agent_waiting", 30.0),
    ("agent_connected", "ready", 5.0),
)


async def test_a_login_granted_workspaced_reader_reads_the_views_and_the_state_tables(
    db: asyncpg.Connection, reader: asyncpg.Connection
) -> None:
    chat = await seed_chat(db, TO_READY, workspace_name="dev", agent_id=str(uuid.uuid4()))
    call = await seed_call(db, chat, answered=False)

    counts = dict(await reader.fetch("SELECT state, chats FROM workspace_state_counts"))
    assert counts["ready"] == 1
    for view in VIEWS:
        await reader.fetch(f"SELECT * FROM {view}")  # noqa: S608 - fixed names
    stale = await reader.fetch("SELECT chat_id::text FROM workspace_stale_agents")
    assert [r["chat_id"] for r in stale] == [chat]
    history = await reader.fetch(
        "SELECT * FROM workspace_transitions WHERE chat_id = $1 ORDER BY version", chat
    )
    assert [r["to_state"] for r in history] == ["creating", "building", "agent_waiting", "ready"]
    row = await reader.fetchrow(
        "SELECT state, workspace_name, last_error, version FROM chat_workspaces WHERE chat_id = $1",
        chat,
    )
    assert dict(row) == {
        "state": "ready",
        "workspace_name": "dev",
        "last_error": None,
        "version": 4,
    }
    waiting = await reader.fetch(
        "SELECT tool_call_id, received_at FROM tool_calls WHERE answered_at IS NULL"
    )
    assert [r["tool_call_id"] for r in waiting] == [call]


@pytest.mark.parametrize(
    "statement",
    [
        (
            "INSERT INTO chat_workspaces (chat_id, owner_id, state, state_entered_at, created_at,"
            " updated_at) VALUES (gen_random_uuid(), gen_random_uuid(), 'none', now(), now(), now())"
        ),
        "UPDATE chat_workspaces SET state = 'failed'",
        "DELETE FROM chat_workspaces",
        "TRUNCATE chat_workspaces",
        (
            "INSERT INTO workspace_transitions (chat_id, from_state, to_state, trigger, event_id,"
            " version, occurred_at) VALUES (gen_random_uuid(), 'none', 'creating', 'x', 'x', 1, now())"
        ),
        "UPDATE workspace_transitions SET trigger = 'x'",
        "DELETE FROM workspace_transitions",
        "UPDATE tool_calls SET answered_at = now()",
        "DELETE FROM tool_calls",
        "UPDATE workspace_stuck_chats SET state = 'failed'",
        "UPDATE workspaced_settings SET value = 1",
        "CREATE TABLE sneaky (id int)",
    ],
)
async def test_the_reader_can_not_write(
    db: asyncpg.Connection, reader: asyncpg.Connection, statement: str
) -> None:
    await seed_chat(db, TO_READY)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await reader.execute(statement)
    assert await db.fetchval("SELECT count(*) FROM workspace_transitions") == 4


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM inbox",
        "SELECT * FROM outbox",
        "SELECT payload FROM outbox",
        "SELECT * FROM provisioner_jobs",
        "SELECT * FROM agents",
        "SELECT * FROM workspaced_settings",
        "SELECT * FROM bridge_watches",
        "SELECT * FROM schema_migrations",
        "SELECT parameters FROM chat_workspaces",
        "SELECT answer FROM tool_calls",
        "SELECT * FROM tool_calls",
    ],
)
async def test_the_reader_can_not_see_the_inbox_the_outbox_or_payloads(
    reader: asyncpg.Connection, query: str
) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await reader.fetch(query)


async def test_the_reader_is_granted_exactly_the_dashboard_objects(db: asyncpg.Connection) -> None:
    tables = await db.fetch(
        "SELECT c.relname, a.privilege_type FROM pg_class c, aclexplode(c.relacl) a"
        " WHERE a.grantee = $1::regrole AND c.relnamespace = current_schema()::regnamespace",
        READER,
    )
    assert sorted(map(tuple, tables)) == sorted(
        [(v, "SELECT") for v in VIEWS] + [("workspace_transitions", "SELECT")]
    )
    columns = await db.fetch(
        "SELECT table_name, column_name, privilege_type FROM information_schema.column_privileges"
        " WHERE grantee = $1 AND table_name IN ('chat_workspaces', 'tool_calls')",
        READER,
    )
    granted = {(r["table_name"], r["column_name"]) for r in columns}
    assert ("chat_workspaces", "parameters") not in granted
    assert ("chat_workspaces", "last_error") in granted
    assert ("tool_calls", "answer") not in granted
    assert ("tool_calls", "answered_at") in granted
    assert {r["privilege_type"] for r in columns} == {"SELECT"}
    role = await db.fetchrow("SELECT * FROM pg_roles WHERE rolname = $1", READER)
    assert not role["rolcanlogin"]
    assert not any(role[k] for k in ("rolsuper", "rolcreaterole", "rolcreatedb", "rolreplication"))


async def test_workspaced_reader_itself_can_not_log_in(database_url: str) -> None:
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="not permitted"):
        await asyncpg.connect(_as_login(database_url, READER, "anything"))


async def test_migrating_another_database_where_the_role_exists_works_and_grants_there_too(
    services: Services,
) -> None:
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(services.server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = services.database_url(name)
        assert "0005_reader_role" in await migrate.migrate(url)
        conn = await asyncpg.connect(url)
        try:
            # Applying it again (the role and every grant exist) changes nothing.
            await conn.execute(dict(migrate.migrations())["0005_reader_role"])
        finally:
            await conn.close()
        async with reader_login(url) as reader_url:
            conn = await asyncpg.connect(reader_url)
            try:
                assert await conn.fetchval("SELECT count(*) FROM workspace_state_counts") == 8
            finally:
                await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _migration_for(role: str) -> str:
    return dict(migrate.migrations())["0005_reader_role"].replace(READER, role)


async def test_the_migration_creates_the_role_when_missing_and_can_run_again(
    db: asyncpg.Connection,
) -> None:
    role = f"reader_{uuid.uuid4().hex[:10]}"
    try:
        await db.execute(_migration_for(role))
        await db.execute(_migration_for(role))
        found = await db.fetchrow("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", role)
        assert found is not None
        assert found["rolcanlogin"] is False
        assert await db.fetchval(
            "SELECT has_table_privilege($1, 'workspace_transitions', 'SELECT')", role
        )
        assert not await db.fetchval("SELECT has_table_privilege($1, 'outbox', 'SELECT')", role)
    finally:
        await db.execute(f"DROP OWNED BY {role}")  # its grants in this database
        await db.execute(f"DROP ROLE IF EXISTS {role}")


async def test_a_migrating_login_without_createrole_is_told_what_to_do(
    db: asyncpg.Connection, database_url: str
) -> None:
    login, password = f"migrator_{uuid.uuid4().hex[:10]}", secrets.token_hex(12)
    await db.execute(f"CREATE ROLE {login} LOGIN PASSWORD '{password}'")
    try:
        conn = await asyncpg.connect(_as_login(database_url, login, password))
        try:
            with pytest.raises(asyncpg.RaiseError, match="cannot create role") as raised:
                await conn.execute(_migration_for(f"reader_{uuid.uuid4().hex[:10]}"))
            assert "CREATE ROLE" in (raised.value.hint or "")
        finally:
            await conn.close()
    finally:
        await db.execute(f"DROP ROLE {login}")
