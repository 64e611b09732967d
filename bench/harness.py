"""
Start the embedded services, a fresh database and topics per scenario, and the daemon.

Everything started here is stopped on the way out, errors included: services
and child processes also die with this process (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from consumers import codec, kafka
from devtools.services import apache_kafka, postgres, process, tansu
from workspaced.settings import Settings, explicit

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results"
TEMPLATE_ID = "8a1b2c3d-4e5f-4a6b-9c7d-0e1f2a3b4c5d"
OWNER_ID = "5f0c6d2a-9b1e-4c3d-8e7f-a1b2c3d4e5f6"
SOURCE = "bench"


def say(text: str) -> None:
    print(text, flush=True)


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def die_with_parent() -> None:
    """
    Ask Linux to SIGTERM this (child) process when its parent dies.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(1, signal.SIGTERM)


@dataclass
class Services:
    """
    The embedded PostgreSQL server and Kafka-protocol broker of one benchmark run.
    """

    pg: postgres.EmbeddedPostgres
    bootstrap_servers: str
    broker_kind: str


@contextlib.contextmanager
def services(broker_kind: str) -> Iterator[Services]:
    """
    Start PostgreSQL and the broker (``tansu`` or ``apache``); stop both at the end.
    """
    started: list[Any] = []
    try:
        pg = postgres.start()
        started.append(pg)
        say(f"PostgreSQL  {pg.url}  (up in {pg.startup_s:.1f} s)")
        broker = apache_kafka.start() if broker_kind == "apache" else tansu.start()
        started.append(broker)
        up = f"{broker_kind}, up in {broker.startup_s:.1f} s"
        say(f"Kafka       {broker.bootstrap_servers}  ({up})")
        yield Services(pg, broker.bootstrap_servers, broker_kind)
    finally:
        for service in reversed(started):
            with contextlib.suppress(Exception):
                service.stop()


def daemon_env(conf: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKSPACED_")}
    logs = {"WORKSPACED_LOG_LEVEL": "warning", "WORKSPACED_LOG_FORMAT": "json"}
    return env | conf.environment() | logs


class ProcessMeter:
    """
    Sample CPU seconds and RSS of one process (and its children).
    """

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak_rss = 0

    def cpu_s(self) -> float:
        try:
            t = self.proc.cpu_times()
        except psutil.Error:
            return 0.0
        return t.user + t.system

    def rss(self) -> int:
        try:
            rss = int(self.proc.memory_info().rss)
        except psutil.Error:
            return 0
        self.peak_rss = max(self.peak_rss, rss)
        return rss


@dataclass
class Daemon:
    managed: process.ManagedProcess
    meter: ProcessMeter


@dataclass
class Stack:
    """
    One scenario's database, topics, daemon and Kafka clients.
    """

    services: Services
    name: str
    conf: Settings
    db_name: str
    pool: asyncpg.Pool
    producer: Any
    tap: Tap
    children: list[process.ManagedProcess] = field(default_factory=list)
    daemon: Daemon | None = None

    @property
    def dsn(self) -> str:
        return self.conf.database_url.get_secret_value()

    def start_daemon(self, profile_to: Path | None = None) -> Daemon:
        if profile_to is None:
            argv = [str(BIN / "workspaced"), "run"]
        else:
            argv = [str(BIN / "pyinstrument"), "-o", str(profile_to), "--renderer", "text"]
            argv += ["-m", "workspaced.cli", "run"]
        managed = process.ManagedProcess.start(
            "workspaced",
            argv,
            log_path=RESULTS / "logs" / f"{self.name}-daemon.log",
            env=daemon_env(self.conf),
            cwd=ROOT,
        )
        self.children.append(managed)
        self.daemon = Daemon(managed, ProcessMeter(managed.popen.pid))
        return self.daemon

    def start_simulator(self, heartbeat_interval_s: float = 600.0) -> process.ManagedProcess:
        argv = [str(BIN / "workspaced"), "simulate", "--create-delay-s", "0", "--job-step-s", "0"]
        argv += [
            "--agent-connect-delay-s",
            "0",
            "--heartbeat-interval-s",
            str(heartbeat_interval_s),
        ]
        argv += ["--seed", "1"]
        managed = process.ManagedProcess.start(
            "simulator",
            argv,
            log_path=RESULTS / "logs" / f"{self.name}-simulator.log",
            env=daemon_env(self.conf),
            cwd=ROOT,
        )
        self.children.append(managed)
        return managed

    async def publish(self, role: str, key: str, ce_type: str, data: Any) -> Any:
        """
        Send one CloudEvents record (binary mode); return the delivery future.
        """
        headers = codec.encode_headers(SOURCE, str(uuid.uuid4()), ce_type, datetime.now(UTC))
        return await self.producer.send(
            self.conf.topic(role), orjson.dumps(data), key=key.encode(), headers=headers
        )

    async def tool_call(self, chat_id: str, tool_call_id: str) -> Any:
        data = {
            "tool_call_id": tool_call_id,
            "chat_id": chat_id,
            "owner_id": OWNER_ID,
            "tool": "create_workspace",
            "arguments": {"template_id": TEMPLATE_ID, "name": "bench"},
        }
        return await self.publish("tool_calls", chat_id, "chat.tool_call.v1", data)

    async def wait_joined(self, timeout_s: float = 90.0) -> float:
        """
        Publish a probe tool call and wait for its create command: the daemon consumes.
        """
        began = time.monotonic()
        chat_id = str(uuid.uuid4())
        await (await self.tool_call(chat_id, f"probe-{chat_id}"))
        await self.tap.wait(lambda: chat_id in self.tap.commands, timeout_s, "the daemon to join")
        return time.monotonic() - began

    async def count(self, query: str, *args: Any) -> int:
        return int(await self.pool.fetchval(query, *args) or 0)


class Tap:
    """
    Read output topics from the start and note when each record arrived (wall clock).
    """

    def __init__(self, conf: Settings, roles: Iterable[str]) -> None:
        self.conf = conf
        self.roles = {conf.topic(r): r for r in roles}
        self.reader = AIOKafkaConsumer(
            **kafka.common(conf.kafka_config(), "bench-tap"),
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=10,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        self.results: dict[str, tuple[float, dict[str, Any]]] = {}
        self.commands: dict[str, dict[str, Any]] = {}
        self.created: dict[str, tuple[float, dict[str, Any]]] = {}
        self.beats: dict[str, tuple[float, dict[str, Any]]] = {}  # the first, by agent
        self.on_created: Callable[[dict[str, Any]], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()

    async def start(self) -> None:
        await self.reader.start()
        parts = [
            TopicPartition(t, p) for t in self.roles for p in range(self.conf.topic_partitions)
        ]
        self.reader.assign(parts)
        await self.reader.seek_to_beginning(*parts)
        self._task = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.reader.stop()

    async def _read(self) -> None:
        while True:
            batch = await self.reader.getmany(timeout_ms=50, max_records=10_000)
            at = time.time()
            for tp, records in batch.items():
                role = self.roles[tp.topic]
                for r in records:
                    data = orjson.loads(r.value)
                    if role == "tool_results":
                        self.results.setdefault(data["tool_call_id"], (at, data))
                    elif role == "workspace_commands":
                        self.commands.setdefault(data["chat_id"], data)
                    elif role == "agent_heartbeats":
                        self.beats.setdefault(data["agent_id"], (at, data))
                    elif role == "workspace_command_results" and "job_id" in data:
                        self.created.setdefault(data["chat_id"], (at, data))
                        if self.on_created is not None:
                            self.on_created(data)
            if batch:
                self._arrived.set()

    async def wait(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                msg = f"timed out after {timeout_s:.0f} s waiting for {what}"
                raise TimeoutError(msg)
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(left, 0.25))


async def _create_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def run_command(argv: list[str], env: dict[str, str], timeout_s: float = 120.0) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        msg = f"{' '.join(argv)} exited with {proc.returncode}:\n{text}"
        raise RuntimeError(msg)
    return text


@contextlib.asynccontextmanager
async def stack(
    svc: Services,
    name: str,
    roles: Iterable[str] = ("tool_results", "workspace_commands"),
    *,
    daemon: bool = True,
    profile_to: Path | None = None,
) -> AsyncIterator[Stack]:
    """
    Give a scenario its own database (migrated), topics, clients and a joined daemon.
    """
    suffix = uuid.uuid4().hex[:8]
    db_name = f"bench_{name}_{suffix}"
    conf = explicit(
        database_url=svc.pg.database_url(db_name),
        kafka_bootstrap_servers=svc.bootstrap_servers,
        topic_prefix=f"bench-{name}-{suffix}.",
        consumer_group=f"bench-{name}-{suffix}",
        kafka_session_timeout_ms=2000,
        kafka_heartbeat_interval_ms=300,
        # Tansu does not answer a waiting fetch when data arrives (see settings).
        kafka_fetch_max_wait_ms=10 if svc.broker_kind == "tansu" else 100,
        topic_partitions=8,
        log_level="warning",
    )
    await _create_database(svc.pg.url, db_name)
    children: list[process.ManagedProcess] = []
    pool: asyncpg.Pool | None = None
    producer = None
    tap: Tap | None = None
    try:
        await run_command([str(BIN / "workspaced"), "migrate"], daemon_env(conf))
        pool = await asyncpg.create_pool(
            conf.database_url.get_secret_value(), min_size=1, max_size=4
        )
        await pool.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await kafka.ensure_topics(conf.kafka_config())
        producer = AIOKafkaProducer(
            **kafka.common(conf.kafka_config(), "bench"),
            acks="all",
            enable_idempotence=False,
            linger_ms=0,
            max_batch_size=512 * 1024,
        )
        await producer.start()
        tap = Tap(conf, roles)
        await tap.start()
        st = Stack(svc, name, conf, db_name, pool, producer, tap, children)
        if daemon:
            st.start_daemon(profile_to)
            await st.wait_joined()
        yield st
    finally:
        for child in reversed(children):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(child.stop, 30.0)
        if tap is not None:
            with contextlib.suppress(Exception):
                await tap.stop()
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.close()
        with contextlib.suppress(Exception):
            await _drop_database(svc.pg.url, db_name)


async def statements(pool: asyncpg.Pool) -> tuple[int, int]:
    """
    Return (pg_stat_statements calls, committed transactions) of this database so far.

    The benchmark's own statistics queries are left out.
    """
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        calls = await conn.fetchval(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid "
            "WHERE d.datname = current_database() AND s.query NOT ILIKE '%pg_stat%'"
        )
        commits = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
    return int(calls), int(commits or 0)


class LagWatcher:
    """
    Keep one admin client and one reader open to poll a group's lag cheaply.
    """

    def __init__(self, conf: Settings, group: str, topic: str) -> None:
        self.conf = conf
        self.group = group
        self.parts = [TopicPartition(topic, p) for p in range(conf.topic_partitions)]
        self.admin = AIOKafkaAdminClient(**kafka.common(conf.kafka_config(), "bench-lag"))
        self.reader = AIOKafkaConsumer(
            **kafka.common(conf.kafka_config(), "bench-lag-reader"), group_id=None
        )

    async def __aenter__(self) -> LagWatcher:  # noqa: PYI034 - final
        await self.admin.start()
        await self.reader.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.reader.stop()
        with contextlib.suppress(Exception):
            await self.admin.close()

    async def lag(self) -> tuple[int, int]:
        """
        Return (uncommitted records, committed records) summed over the partitions.
        """
        ends = await self.reader.end_offsets(self.parts)
        committed = await self.admin.list_consumer_group_offsets(self.group, partitions=self.parts)
        lag = done_total = 0
        for tp in self.parts:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            lag += max(0, ends[tp] - done)
            done_total += done
        return lag, done_total
