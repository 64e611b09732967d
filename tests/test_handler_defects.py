"""
The handler and codec defects of issue 14, each reproduced on real PostgreSQL and Kafka.

Most drive a daemon running in this process, only through Kafka records and
the tables; the dead letter's size is checked on the handler and the store
alone, where a record too large for any producer can be handed over. Outages
are made with PostgreSQL's own tools: ``pg_terminate_backend`` for a closed
connection, ``default_transaction_read_only`` for a primary demoted under a
name that still points at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from consumers import codec, kafka
from statemachine.model import Timeouts
from storage import rows
from storage.store import PostgresStateStore
from telemetry import metrics
from tests.bus import OWNER_ID, TEMPLATE_ID, Bus, Received, new_id
from tests.conftest import RunningDaemon, Services
from workspaced import settings
from workspaced.handler import BatchHandler

TERMINATE_OTHERS = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
)
# The broker's default message.max.bytes is 1 MiB plus 12 bytes.
BROKER_MAX_MESSAGE_BYTES = 1_048_588


async def _until(
    condition: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 30
) -> None:
    """
    Poll ``condition`` until it holds; fail with ``what`` after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened within {timeout_s} s: {what}")
        await asyncio.sleep(0.02)


def _answers(bus: Bus, tool_call_id: str) -> list[Received]:
    return [r for r in bus.received["tool_results"] if r.data["tool_call_id"] == tool_call_id]


def _answered_once(bus: Bus, tool_call_id: str) -> dict[str, Any]:
    """
    Return the one answer of a call; a record published again must be the same record (R14).
    """
    found = _answers(bus, tool_call_id)
    assert found, f"{tool_call_id} got no answer"
    assert len({r.headers["ce_id"] for r in found}) == 1, f"{tool_call_id} answered twice"
    assert all(r.data == found[0].data for r in found)
    data: dict[str, Any] = found[0].data
    return data


async def _answered_or_dead_lettered(bus: Bus, tool_call_id: str) -> None:
    async def decided() -> bool:
        return bool(_answers(bus, tool_call_id) or bus.received["dead_letters"])

    await _until(decided, f"an answer to {tool_call_id} or a dead letter")


# 1. A closed connection is an outage: the event is retried, never dead-lettered


async def test_a_call_whose_connection_is_terminated_mid_transaction_is_answered_not_dead_lettered(
    bus: Bus, running: RunningDaemon, db: asyncpg.Connection, database_url: str
) -> None:
    ce_id = new_id()
    # Hold the call's inbox row uncommitted: the daemon's claim of it waits on
    # this transaction, so its backend is mid-transaction when it is terminated.
    holder = await asyncpg.connect(database_url)
    held = holder.transaction()
    await held.start()
    try:
        await holder.execute("INSERT INTO inbox (source, id) VALUES ('test', $1)", ce_id)
        call = await bus.tool_call(new_id(), template_id="", ce_id=ce_id)
        waiting = (
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND $1 = ANY(pg_blocking_pids(pid))"
        )

        async def blocked() -> bool:
            return bool(await db.fetch(waiting, holder.get_server_pid()))

        await _until(blocked, "the daemon's transaction waits on the held inbox row")
        (pid,) = [r["pid"] for r in await db.fetch(waiting, holder.get_server_pid())]
        await db.execute("SELECT pg_terminate_backend($1)", pid)

        async def gone() -> bool:
            return not await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid
            )

        await _until(gone, "the daemon's backend exited")
    finally:
        await held.rollback()  # the daemon's retry claims the row
        await holder.close()
    await _answered_or_dead_lettered(bus, call)
    assert bus.received["dead_letters"] == [], "a closed connection is not the record's fault"
    assert _answered_once(bus, call)["is_error"] is True
    assert running.task is not None
    assert not running.task.done()


async def test_every_call_is_answered_once_while_the_daemons_backends_are_terminated_again_and_again(
    bus: Bus, running: RunningDaemon, db: asyncpg.Connection
) -> None:
    warmup = await bus.tool_call(new_id(), template_id="")
    await bus.results_for(warmup)

    async def terminate_again_and_again() -> None:
        for _ in range(60):
            await db.execute(TERMINATE_OTHERS)
            await asyncio.sleep(0.05)  # pace: the daemon must reconnect and get some work done

    chaos = asyncio.create_task(terminate_again_and_again())
    invalid: list[str] = []
    chats: list[str] = []
    try:
        for i in range(30):
            if i % 2:
                invalid.append(await bus.tool_call(new_id(), template_id=""))
            else:
                chats.append(new_id())
                await bus.tool_call(chats[-1], name=f"dev{i}")
            await asyncio.sleep(0.05)  # pace: spread the calls over the terminations
        await chaos
    finally:
        chaos.cancel()

    async def decided() -> bool:
        commanded = {r.data["chat_id"] for r in bus.received["workspace_commands"]}
        everything = all(_answers(bus, c) for c in invalid) and commanded >= set(chats)
        return everything or bool(bus.received["dead_letters"])

    await _until(decided, "every call answered and every chat's command sent", timeout_s=60)
    assert bus.received["dead_letters"] == [], "a closed connection is not the record's fault"
    for call in invalid:
        assert _answered_once(bus, call)["is_error"] is True
    for chat in chats:
        sent = [r for r in bus.received["workspace_commands"] if r.data["chat_id"] == chat]
        assert len({r.data["command_id"] for r in sent}) == 1, f"chat {chat}: two commands"
    assert running.task is not None
    assert not running.task.done()


# 2. Dead-lettering is total: a record Kafka allows never stops the daemon


class _RawOutputs:
    """
    Read the output topics as Kafka gives them: header values may be None.
    """

    def __init__(self, conf: settings.Settings) -> None:
        self._conf = conf
        self._reader = AIOKafkaConsumer(
            **kafka.common(conf.kafka_config(), "test-raw-reader"),
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=conf.kafka_fetch_max_wait_ms,
        )
        self.records: dict[str, list[Any]] = {"tool_results": [], "dead_letters": []}
        self._roles = {conf.topic(role): role for role in self.records}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._reader.start()
        parts = [
            TopicPartition(t, p) for t in self._roles for p in range(self._conf.topic_partitions)
        ]
        self._reader.assign(parts)
        await self._reader.seek_to_beginning(*parts)
        self._task = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self._reader.stop()

    async def _read(self) -> None:
        while True:
            batch = await self._reader.getmany(timeout_ms=100)
            for tp, records in batch.items():
                self.records[self._roles[tp.topic]] += records

    def results_for(self, tool_call_id: str) -> list[Any]:
        return [
            r
            for r in self.records["tool_results"]
            if orjson.loads(r.value)["tool_call_id"] == tool_call_id
        ]


@pytest.fixture
async def raw(conf: settings.Settings) -> AsyncIterator[_RawOutputs]:
    outputs = _RawOutputs(conf)
    await outputs.start()
    yield outputs
    await outputs.stop()


@pytest.fixture
async def producer(conf: settings.Settings) -> AsyncIterator[Any]:
    made = kafka.producer(conf.kafka_config(), "test-raw-producer")
    await made.start()
    yield made
    await made.stop()


def _ce_headers(ce_type: str) -> list[tuple[str, bytes | None]]:
    return list(codec.encode_headers("test", new_id(), ce_type, datetime.now(UTC)))


def _headers(record: Any) -> dict[str, bytes | None]:
    return dict(record.headers)


async def test_records_with_a_null_header_value_or_a_nul_in_a_dlq_header_name_are_dead_lettered_and_the_daemon_goes_on(
    conf: settings.Settings, running: RunningDaemon, raw: _RawOutputs, producer: Any
) -> None:
    topic = conf.topic("tool_calls")
    null_value = [*_ce_headers("chat.tool_call.v1"), ("x", None)]
    nul_name = [*_ce_headers("chat.tool_call.v1"), ("dlq_\x00evil", b"v")]
    await producer.send_and_wait(topic, b"{not json", key=b"null-value", headers=null_value)
    await producer.send_and_wait(topic, b"{not json", key=b"nul-name", headers=nul_name)
    call = f"call_{uuid.uuid4().hex[:16]}"
    data = {
        "tool_call_id": call,
        "chat_id": new_id(),
        "owner_id": OWNER_ID,
        "tool": "create_workspace",
        "arguments": {"template_id": ""},
    }
    await producer.send_and_wait(
        topic, orjson.dumps(data), key=b"valid", headers=_ce_headers("chat.tool_call.v1")
    )

    async def decided() -> bool:
        done = bool(raw.results_for(call)) and len(raw.records["dead_letters"]) >= 2
        return done or bool(running.task and running.task.done())

    await _until(decided, "both dead-lettered and the valid call after them answered")
    assert running.task is not None
    assert not running.task.done(), "the daemon went on"
    dead = raw.records["dead_letters"]
    assert len(dead) == 2
    for record in dead:
        headers = _headers(record)
        assert (headers["dlq_reason"] or b"").startswith(b"value is not JSON")
        assert headers["dlq_topic"] == topic.encode()
        assert headers["dlq_partition"] is not None
        assert headers["dlq_offset"] is not None
    # Whole (original key, value and headers), or reason and position alone
    # when the original could not be stored: never nothing.
    whole = {record.key: record for record in dead if record.key is not None}
    for key, sent in ((b"null-value", null_value), (b"nul-name", nul_name)):
        if key in whole:
            assert list(whole[key].headers)[: len(sent)] == sent
            assert whole[key].value == b"{not json"


# 3. NUL characters: an error result for arguments, a dead letter naming the field otherwise


async def test_a_tool_call_with_nul_in_a_parameter_gets_an_error_result(
    bus: Bus, running: RunningDaemon, db: asyncpg.Connection
) -> None:
    chat = new_id()
    call = await bus.tool_call(chat, name="dev", parameters={"region": "eu\u0000"})
    await _answered_or_dead_lettered(bus, call)
    assert bus.received["dead_letters"] == []
    result = _answered_once(bus, call)
    assert result["is_error"] is True
    assert result["content"] == {
        "error": "invalid arguments: arguments.parameters.region contains a NUL character"
    }
    assert await db.fetchval("SELECT count(*) FROM chat_workspaces WHERE chat_id = $1", chat) == 0


async def test_a_template_id_with_nul_in_its_first_characters_is_echoed_escaped(
    bus: Bus, running: RunningDaemon
) -> None:
    # 45 bytes: parsed as urn:uuid:<uuid>, whose first nine characters are echoed (R1).
    template_id = "urn\u0000uuid:" + TEMPLATE_ID
    call = await bus.tool_call(new_id(), template_id=template_id)
    await _answered_or_dead_lettered(bus, call)
    assert bus.received["dead_letters"] == []
    assert _answered_once(bus, call)["content"] == {
        "error": 'invalid template_id: invalid urn prefix: "urn\\x00uuid:"'
    }


async def test_a_name_with_nul_seeds_a_generated_name_as_r2_says(
    bus: Bus, running: RunningDaemon
) -> None:
    chat = new_id()
    await bus.tool_call(chat, name="dev\u0000box", template_name="py\u0000thon")
    (command,) = await bus.command_for(chat)
    assert command["name"].startswith("devbox-")
    assert bus.received["dead_letters"] == []


async def test_a_tool_call_id_with_nul_is_dead_lettered_with_a_reason_naming_it(
    bus: Bus, running: RunningDaemon
) -> None:
    await bus.tool_call(new_id(), tool_call_id="nul\u0000byte", name="dev")
    (dead,) = await bus.wait_for("dead_letters")
    assert dead.headers["dlq_reason"] == (
        "could not be applied: tool_call_id contains a NUL character"
    )


def _workspace_ids() -> dict[str, str]:
    return {
        "command_id": new_id(),
        "chat_id": new_id(),
        "workspace_id": new_id(),
        "build_id": new_id(),
        "job_id": new_id(),
    }


def _job(**extra: Any) -> dict[str, Any]:
    ids = _workspace_ids()
    del ids["command_id"], ids["chat_id"]
    return ids | {"transition": "start", "status": "failed", "occurred_at": "2025-01-31T12:00:00Z"}


_CREATED = _workspace_ids() | {"workspace_name": "dev", "owner_name": "alice"}
_FAILED = {"command_id": new_id(), "chat_id": new_id(), "message": "no"}
_HEARTBEAT = {
    "agent_id": new_id(),
    "workspace_id": new_id(),
    "lifecycle_state": "ready",
    "occurred_at": "2025-01-31T12:00:00Z",
}
NUL_FIELDS = [
    ("workspace_command_results", "coder.workspace.created.v1", _CREATED, "workspace_name"),
    ("workspace_command_results", "coder.workspace.created.v1", _CREATED, "owner_name"),
    ("workspace_command_results", "coder.workspace.create_failed.v1", _FAILED, "message"),
    ("workspace_command_results", "coder.workspace.create_failed.v1", _FAILED, "detail"),
    ("workspace_command_results", "coder.workspace.create_failed.v1", _FAILED, "validations"),
    ("provisioner_job_updates", "coder.provisioner_job.updated.v1", _job(), "error"),
    ("provisioner_job_updates", "coder.provisioner_job.updated.v1", _job(), "agents"),
    ("agent_heartbeats", "coder.agent.heartbeat.v1", _HEARTBEAT, "lifecycle_state"),
]


def _with_nul(data: dict[str, Any], field: str) -> tuple[dict[str, Any], str]:
    """
    Return ``data`` with a NUL in ``field``, and the name the reason must give it.
    """
    if field == "validations":
        return data | {"validations": [{"field": "name", "detail": "bad\u0000"}]}, (
            "validations.0.detail"
        )
    if field == "agents":
        return data | {"agents": [{"id": new_id(), "name": "main\u0000"}]}, "agents.0.name"
    return data | {field: "x\u0000y"}, field


@pytest.mark.parametrize(("role", "ce_type", "data", "field"), NUL_FIELDS)
def test_the_codec_dead_letters_nul_in_any_text_postgresql_stores_and_names_the_field(
    role: str, ce_type: str, data: dict[str, Any], field: str
) -> None:
    value, named = _with_nul(data, field)
    headers = codec.encode_headers("test", new_id(), ce_type, datetime.now(UTC))
    record = codec.RawRecord(role, role, 0, 0, None, orjson.dumps(value), headers)
    decoded = codec.decode(record, 1_048_576)
    assert isinstance(decoded, codec.DeadLetter)
    assert decoded.reason == f"could not be applied: {named} contains a NUL character"
    clean = codec.RawRecord(role, role, 0, 0, None, orjson.dumps(data), headers)
    assert isinstance(codec.decode(clean, 1_048_576), codec.Inbound)


async def test_a_job_update_and_a_heartbeat_with_nul_are_dead_lettered_and_the_daemon_goes_on(
    bus: Bus, running: RunningDaemon
) -> None:
    job, _ = _with_nul(_job(), "error")
    beat, _ = _with_nul(_HEARTBEAT, "lifecycle_state")
    await bus.publish("provisioner_job_updates", "k1", "coder.provisioner_job.updated.v1", job)
    await bus.publish("agent_heartbeats", "k2", "coder.agent.heartbeat.v1", beat)
    call = await bus.tool_call(new_id(), template_id="")
    await bus.results_for(call)
    dead = await bus.wait_for("dead_letters", count=2)
    reasons = {d.key: d.headers["dlq_reason"] for d in dead}
    assert reasons["k1"].startswith("could not be applied: error contains a NUL character")
    assert reasons["k2"].startswith("could not be applied: lifecycle_state contains a NUL")


# 4. A dead letter always fits the broker: a short reason, the whole record sized


async def test_a_job_update_with_sixty_thousand_empty_agents_is_dead_lettered_with_a_short_reason(
    bus: Bus, running: RunningDaemon
) -> None:
    job = _job() | {"agents": [{}] * 60_000}
    await bus.publish("provisioner_job_updates", "many", "coder.provisioner_job.updated.v1", job)
    call = await bus.tool_call(new_id(), template_id="")
    await bus.results_for(call, timeout_s=30)
    (dead,) = await bus.wait_for("dead_letters")
    reason = dead.headers["dlq_reason"]
    assert len(reason.encode()) <= 1024
    assert reason.startswith("invalid data: agents.0.id: Field required; agents.0.name:")
    assert "more errors" in reason
    assert dead.value == orjson.dumps(job), "a value under the limits is kept whole"


@pytest.fixture
async def handler(database_url: str) -> AsyncIterator[BatchHandler]:
    store = await PostgresStateStore.open(database_url, lambda role: f"t.{role}", 2)
    yield BatchHandler(store, Timeouts(), source="test", dead_letter_topic="t.dead")
    await store.close()


async def _stored_dead_letter(
    db: asyncpg.Connection,
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]:
    row = await db.fetchrow("SELECT key, payload, headers::text FROM outbox")
    headers = rows.decode_headers(orjson.loads(row["headers"]))
    assert headers is not None
    return row["key"], row["payload"], list(headers)


@pytest.mark.parametrize(
    ("header_count", "kept"), [(200, "headers"), (1200, "value")], ids=["value-cut", "headers-cut"]
)
async def test_a_dead_letter_is_cut_so_key_headers_and_value_together_fit_the_broker(
    handler: BatchHandler, db: asyncpg.Connection, header_count: int, kept: str
) -> None:
    value = b"v" * 950_000
    headers = [(f"h{i}", b"x" * 1000) for i in range(header_count)]
    record = codec.RawRecord("tool_calls", "t.tool_calls", 3, 7, b"key", value, headers)
    await handler.handle([codec.DeadLetter("value is not JSON", record)])
    key, payload, stored = await _stored_dead_letter(db)
    size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, payload, stored)
    assert size <= 960 * 1024 < BROKER_MAX_MESSAGE_BYTES
    found = dict(stored)
    assert found["dlq_reason"] == b"value is not JSON"
    assert (found["dlq_topic"], found["dlq_partition"], found["dlq_offset"]) == (
        b"t.tool_calls",
        b"3",
        b"7",
    )
    assert key == b"key"
    assert payload is not None
    if kept == "headers":
        assert stored[:header_count] == headers
        assert "dlq_headers_dropped" not in found
        assert found["dlq_original_bytes"] == b"950000"
        assert value.startswith(payload)
        assert len(payload) > 700_000, "the value keeps what the headers leave"
    else:
        assert found["dlq_headers_dropped"] == str(header_count).encode()
        assert not any(name.startswith("h") for name, _ in stored)
        assert payload == value, "the room the headers left goes to the value"
        assert "dlq_original_bytes" not in found


# 5. A read-only database: retry, never exit


async def _terminate(admin: asyncpg.Connection, name: str) -> None:
    await admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = $1 AND pid <> pg_backend_pid()",
        name,
    )


@contextlib.asynccontextmanager
async def _read_only(services: Services, name: str) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """
    Make database ``name`` read-only for every new session; give a callable that undoes it.
    """
    admin = await asyncpg.connect(services.server_url)
    await admin.execute("SET default_transaction_read_only = off")

    async def writable() -> None:
        await admin.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
        await _terminate(admin, name)  # sessions opened read-only stay so

    try:
        await admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        await _terminate(admin, name)
        yield writable
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
        await admin.close()


async def test_a_read_only_database_keeps_the_daemon_retrying_and_the_call_is_answered_once_writes_return(
    bus: Bus, running: RunningDaemon, services: Services, database_url: str
) -> None:
    warmup = await bus.tool_call(new_id(), template_id="")
    await bus.results_for(warmup)
    async with _read_only(services, database_url.rsplit("/", 1)[1]) as writable:
        tried = metrics.STORAGE_ERRORS.labels("unavailable")._value.get()
        call = await bus.tool_call(new_id(), template_id="")
        # A negative: while the batch meets the read-only database again and
        # again, nothing may be answered, dead-lettered or stopped.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while metrics.STORAGE_ERRORS.labels("unavailable")._value.get() < tried + 3:
            assert loop.time() < deadline, "the daemon never met the read-only database"
            await asyncio.sleep(0.05)
        assert _answers(bus, call) == []
        assert bus.received["dead_letters"] == [], "a read-only database is not the record's fault"
        assert running.task is not None
        assert not running.task.done(), "the daemon went on"
        chat = new_id()
        await bus.tool_call(chat, name="dev")  # a record after it: the daemon still takes it
        await writable()
        await bus.results_for(call, timeout_s=40)
        await bus.command_for(chat, timeout_s=40)
    assert _answered_once(bus, call)["is_error"] is True
    assert bus.received["dead_letters"] == []
    assert not running.task.done()
