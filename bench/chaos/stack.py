"""
Give a scenario its own database, topics, clients and supervised processes.

The run talks to the daemon only the way chat backends and Coder do: records
on the topics, and reads of the tables. Every wait is on a condition (rows,
offsets, records) with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from bench import harness
from bench.chaos import ledger, processes, workload
from bench.chaos.services import ChaosServices
from consumers import codec, kafka
from workspaced.settings import Settings, explicit

APP_NAME = "workspaced-chaos"
# Outputs, and Coder's inputs too: a stuck chat is explained from what Coder said.
TAPPED = (
    "tool_results",
    "workspace_commands",
    "dead_letters",
    "workspace_command_results",
    "provisioner_job_updates",
    "agent_heartbeats",
)
SOURCE = "chaos"
T = TypeVar("T")
DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


async def until(
    check: Callable[[], Awaitable[bool]], timeout_s: float, what: str, every_s: float = 0.1
) -> float:
    """
    Wait until ``check()`` holds; return how long it took, or raise after ``timeout_s``.
    """
    began = time.monotonic()
    while not await check():
        if time.monotonic() - began > timeout_s:
            msg = f"timed out after {timeout_s:.0f} s waiting for {what}"
            raise TimeoutError(msg)
        await asyncio.sleep(every_s)
    return time.monotonic() - began


@dataclass(slots=True)
class Seen:
    """
    One record read from a topic, as Kafka gave it, and when it arrived (monotonic).
    """

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    at: float

    def last_header(self, name: str) -> str | None:
        """
        Return the last value of header ``name`` as text (a dead letter adds its own last).
        """
        for key, value in reversed(self.headers):
            if key == name:
                return None if value is None else value.decode(errors="replace")
        return None


class Tap:
    """
    Read topics from their start and keep every record, with its arrival time.
    """

    def __init__(self, conf: Settings, roles: Iterable[str]) -> None:
        self.conf = conf
        self.roles = {conf.topic(r): r for r in roles}
        self.reader = AIOKafkaConsumer(
            **kafka.common(conf.kafka_config(), "chaos-tap"),
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=conf.kafka_fetch_max_wait_ms,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        self.seen: dict[str, list[Seen]] = {r: [] for r in self.roles.values()}
        self.next_offset: dict[TopicPartition, int] = defaultdict(int)
        self.errors = 0
        self._task: asyncio.Task[None] | None = None

    def partitions(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t in self.roles for p in range(self.conf.topic_partitions)]

    async def start(self) -> None:
        await self.reader.start()
        self.reader.assign(self.partitions())
        await self.reader.seek_to_beginning(*self.partitions())
        self._task = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            await self.reader.stop()

    async def _read(self) -> None:
        while True:
            try:
                batch = await self.reader.getmany(timeout_ms=100, max_records=10_000)
            except Exception:  # noqa: BLE001 - the broker is away; the reader reconnects by itself
                self.errors += 1
                await asyncio.sleep(0.5)
                continue
            at = time.monotonic()
            for tp, records in batch.items():
                found = self.seen[self.roles[tp.topic]]
                for r in records:
                    headers = tuple(r.headers or ())
                    found.append(Seen(tp.partition, r.offset, r.key, r.value, headers, at))
                    self.next_offset[tp] = r.offset + 1

    async def caught_up(self) -> bool:
        """
        Tell whether every record the topics hold right now has been read.
        """
        try:
            ends = await self.reader.end_offsets(self.partitions())
        except KafkaError:
            return False
        return all(self.next_offset[tp] >= end for tp, end in ends.items())

    def answers(self) -> list[ledger.Answer]:
        return ledger.answers_from((s.value, s.at) for s in self.seen.get("tool_results", []))

    def commands(self) -> list[tuple[str, str]]:
        found = []
        for s in self.seen.get("workspace_commands", []):
            with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
                data = orjson.loads(s.value or b"")
                found.append((str(data["chat_id"]), str(data["command_id"])))
        return found


@dataclass(slots=True)
class Stack:
    """
    One scenario's settings, database, clients and processes.
    """

    name: str
    svc: ChaosServices
    conf: Settings
    db_name: str
    pool: asyncpg.Pool
    producer: AIOKafkaProducer
    admin: AIOKafkaAdminClient
    tap: Tap
    fleet: processes.Fleet
    sent_at: dict[str, float] = field(default_factory=dict)  # tool call id -> first sent

    def log_path(self, member: str) -> Any:
        return harness.RESULTS / "logs" / f"chaos-{self.name}-{member}.log"

    def env(self, **overrides: Any) -> dict[str, str]:
        conf = self.conf.model_copy(update=overrides) if overrides else self.conf
        return harness.daemon_env(conf)

    def add_daemon(self, index: int) -> processes.Supervised:
        name = f"daemon-{index}"
        member = processes.Supervised(
            name, processes.daemon_argv(), lambda _n: self.env(), self.log_path(name)
        )
        return self.fleet.add(member)

    def add_simulator(self, **options: Any) -> processes.Supervised:
        # A restarted simulator has forgotten what it was doing: give it a new
        # group, so it reads every command again (Coder redelivering; R12).
        def env(starts: int) -> dict[str, str]:
            group = self.conf.consumer_group + (f"-r{starts}" if starts else "")
            return self.env(consumer_group=group)

        argv = processes.simulator_argv(**options)
        return self.fleet.add(processes.Supervised("simulator", argv, env, self.log_path("sim")))

    def daemons(self) -> list[processes.Supervised]:
        return [m for m in self.fleet.members if m.name.startswith("daemon")]

    async def db(self, query: str, *args: Any, timeout_s: float = 90.0) -> list[asyncpg.Record]:
        """
        Run a query, retrying while PostgreSQL is away (restarted, or killed by a scenario).
        """
        began = time.monotonic()
        while True:
            try:
                return list(await self.pool.fetch(query, *args, timeout=10))
            except DB_ERRORS:
                if time.monotonic() - began > timeout_s:
                    raise
                await asyncio.sleep(0.2)

    async def count(self, query: str, *args: Any) -> int:
        rows = await self.db(query, *args)
        return int(rows[0][0] or 0) if rows else 0

    async def send(
        self,
        role: str,
        key: bytes | None,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes | None]],
        *,
        partition: int | None = None,
        timeout_s: float = 120.0,
    ) -> tuple[str, int, int]:
        """
        Publish one record, retrying while the broker is away; return (topic, partition, offset).
        """
        topic = self.conf.topic(role)
        began = time.monotonic()
        while True:
            try:
                future = await self.producer.send(
                    topic, value, key=key, partition=partition, headers=list(headers)
                )
                meta = await future
            except KafkaError:
                if time.monotonic() - began > timeout_s:
                    raise
                await asyncio.sleep(0.5)
                continue
            return topic, meta.partition, meta.offset

    async def publish(
        self, role: str, key: str, ce_type: str, data: Any, partition: int | None = None
    ) -> tuple[str, int, int]:
        headers = codec.encode_headers(SOURCE, str(uuid.uuid4()), ce_type, datetime.now(UTC))
        value = orjson.dumps(data)
        return await self.send(role, key.encode(), value, headers, partition=partition)

    async def call(self, call: workload.Call, partition: int | None = None) -> None:
        data = workload.tool_call_data(call)
        await self.publish("tool_calls", call.chat_id, "chat.tool_call.v1", data, partition)

    async def wait_served(self, timeout_s: float = 90.0) -> float:
        """
        Send a probe call to every partition of the calls topic and wait for each create command.
        """
        began = time.monotonic()
        probes = [str(uuid.uuid4()) for _ in range(self.conf.topic_partitions)]
        for partition, chat_id in enumerate(probes):
            probe = workload.Call(0, chat_id, f"probe-{chat_id}", "probe")
            await self.call(probe, partition)

        async def served() -> bool:
            chats = {chat for chat, _ in self.tap.commands()}
            return all(p in chats for p in probes)

        await until(served, timeout_s, "the daemons to serve every partition")
        return time.monotonic() - began

    def input_partitions(self) -> list[TopicPartition]:
        return [
            TopicPartition(self.conf.topic(role), p)
            for role in kafka.INPUT_ROLES
            for p in range(self.conf.topic_partitions)
        ]

    async def lag(self, group: str | None = None) -> int:
        """
        Return the input records the daemon's group has not committed yet (-1: unknown now).
        """
        parts = self.input_partitions()
        try:
            ends = await self.tap.reader.end_offsets(parts)
            committed = await self.admin.list_consumer_group_offsets(
                group or self.conf.consumer_group, partitions=parts
            )
        except KafkaError:
            return -1
        lag = 0
        for tp in parts:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            lag += max(0, ends[tp] - done)
        return lag

    async def quiesce(self, timeout_s: float) -> float:
        """
        Wait until inputs are committed, the outbox is empty and the tap has read everything.
        """

        async def quiet() -> bool:
            if await self.lag() != 0:
                return False
            if await self.count("SELECT count(*) FROM outbox") != 0:
                return False
            return await self.tap.caught_up()

        return await until(quiet, timeout_s, "inputs committed, outbox empty, outputs read", 0.2)

    async def states(self) -> dict[str, str]:
        rows = await self.db("SELECT chat_id::text, state FROM chat_workspaces")
        return {r["chat_id"]: r["state"] for r in rows}


def settings_for(svc: ChaosServices, name: str, **overrides: Any) -> Settings:
    """
    Return a scenario's settings: its own database, topic prefix and group on the services.
    """
    suffix = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "database_url": svc.pg.database_url(f"chaos_{name}_{suffix}"),
        "kafka_bootstrap_servers": svc.bootstrap_servers,
        "topic_prefix": f"chaos-{name}-{suffix}.",
        "consumer_group": f"chaos-{name}-{suffix}",
        # Tansu does not answer a waiting fetch when data arrives (see settings).
        "kafka_fetch_max_wait_ms": 10 if svc.kind == "tansu" else 100,
        "topic_partitions": 8,
        "log_level": "warning",
    }
    return explicit(**(values | overrides))


@contextlib.asynccontextmanager
async def stack(
    svc: ChaosServices,
    name: str,
    roles: Iterable[str] = TAPPED,
    *,
    max_request_bytes: int = 1024 * 1024,
    durable_commits: bool = False,
    **overrides: Any,
) -> AsyncIterator[Stack]:
    """
    Make a scenario's database (migrated) and topics, its clients and an empty fleet.

    The embedded server runs with ``synchronous_commit`` off (throwaway data):
    a killed postmaster then forgets the last commits. ``durable_commits``
    turns it on for this database, as on any server whose data matters.
    """
    conf = settings_for(svc, name, **overrides)
    db_name = conf.database_url.get_secret_value().rpartition("/")[2]
    server = await asyncpg.connect(svc.pg.url)
    try:
        await server.execute(f'CREATE DATABASE "{db_name}"')
        if durable_commits:
            await server.execute(f'ALTER DATABASE "{db_name}" SET synchronous_commit = on')
    finally:
        await server.close()
    fleet = processes.Fleet()
    opened: list[Callable[[], Awaitable[Any]]] = []
    try:
        await harness.run_command(
            [str(harness.BIN / "workspaced"), "migrate"], harness.daemon_env(conf)
        )
        await kafka.ensure_topics(conf.kafka_config())
        pool = await asyncpg.create_pool(
            conf.database_url.get_secret_value(),
            min_size=0,  # no pool upkeep (and its log noise) while a scenario kills PostgreSQL
            max_size=4,
            server_settings={"application_name": APP_NAME},
        )
        opened.append(pool.close)
        producer = AIOKafkaProducer(
            **kafka.common(conf.kafka_config(), "chaos"),
            acks="all",
            enable_idempotence=False,
            linger_ms=2,
            max_request_size=max_request_bytes,
            request_timeout_ms=10_000,
        )
        await producer.start()
        opened.append(producer.stop)
        admin = AIOKafkaAdminClient(**kafka.common(conf.kafka_config(), "chaos-admin"))
        await admin.start()
        opened.append(admin.close)
        tap = Tap(conf, roles)
        await tap.start()
        opened.append(tap.stop)
        st = Stack(name, svc, conf, db_name, pool, producer, admin, tap, fleet)
        fleet.start_watching()
        yield st
    finally:
        await fleet.stop()
        for close in reversed(opened):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(close(), 30)
        with contextlib.suppress(Exception):
            server = await asyncpg.connect(svc.pg.url)
            try:
                await server.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
            finally:
                await server.close()
