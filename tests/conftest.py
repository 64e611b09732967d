"""
Start real services for the test session and give each test its own database and topics.

PostgreSQL: embedded, or ``WORKSPACED_TEST_DATABASE_URL`` (a server where we
may create databases). Kafka: embedded Tansu, Apache Kafka when
``WORKSPACED_TEST_BROKER=apache``, or ``WORKSPACED_TEST_KAFKA_BOOTSTRAP_SERVERS``.
A service that cannot be started fails the session; nothing is skipped.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from consumers import kafka
from devtools.services import apache_kafka, postgres, tansu
from storage import migrate
from tests.bus import Bus
from workspaced import daemon, settings

TEMPLATE_DB = "workspaced_template"


@dataclass(frozen=True)
class Services:
    server_url: str  # a database on the server, for CREATE DATABASE
    bootstrap_servers: str
    broker_kind: str

    def database_url(self, name: str) -> str:
        base, _, _ = self.server_url.rpartition("/")
        return f"{base}/{name}"


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    started: list[Any] = []
    try:
        server_url = os.environ.get("WORKSPACED_TEST_DATABASE_URL")
        if server_url is None:
            pg = postgres.start()
            started.append(pg)
            server_url = pg.url
            print(f"\nPostgreSQL: embedded on {server_url} (up in {pg.startup_s:.2f} s)")
        servers = os.environ.get("WORKSPACED_TEST_KAFKA_BOOTSTRAP_SERVERS")
        kind = "external"
        if servers is None:
            kind = os.environ.get("WORKSPACED_TEST_BROKER", "tansu")
            broker = apache_kafka.start() if kind == "apache" else tansu.start()
            started.append(broker)
            servers = broker.bootstrap_servers
            print(f"Kafka: {kind} on {servers} (up in {broker.startup_s:.2f} s)")
        services = Services(server_url, servers, kind)
        asyncio.run(_make_template(services))
        yield services
    finally:
        for service in reversed(started):
            service.stop()


async def _make_template(services: Services) -> None:
    conn = await asyncpg.connect(services.server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"')
        await conn.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
        await migrate.migrate(services.database_url(TEMPLATE_DB))
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    finally:
        await conn.close()


@pytest.fixture
async def database_url(services: Services) -> AsyncIterator[str]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(services.server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
    finally:
        await conn.close()
    yield services.database_url(name)
    conn = await asyncpg.connect(services.server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def make_settings(services: Services, database_url: str, **overrides: Any) -> settings.Settings:
    suffix = uuid.uuid4().hex[:10]
    values: dict[str, Any] = {
        "database_url": database_url,
        "kafka_bootstrap_servers": services.bootstrap_servers,
        "topic_prefix": f"t{suffix}.",
        "consumer_group": f"g{suffix}",
        "kafka_session_timeout_ms": 2000,
        "kafka_heartbeat_interval_ms": 300,
        "kafka_fetch_max_wait_ms": 10 if services.broker_kind == "tansu" else 100,
        "topic_partitions": 4,
        "outbox_sweep_seconds": 1.0,
        "timer_sweep_seconds": 5.0,
        "log_level": "warning",
        # Off unless a test asks: instances must not compete for one port.
        "metrics_address": "",
        "bridge_metrics_address": "",
    } | overrides
    return settings.explicit(**values)


@pytest.fixture
async def conf(services: Services, database_url: str) -> settings.Settings:
    conf = make_settings(services, database_url)
    await kafka.ensure_topics(conf.kafka_config())
    return conf


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def bus(conf: settings.Settings) -> AsyncIterator[Bus]:
    async with Bus(conf) as bus:
        yield bus


class RunningDaemon:
    def __init__(self, conf: settings.Settings) -> None:
        self.conf = conf
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(daemon.run(self.conf, self.stop))

    async def halt(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 30)
            self.task = None


@pytest.fixture
async def running(conf: settings.Settings) -> AsyncIterator[RunningDaemon]:
    """
    Run the daemon in this test's event loop, against this test's database and topics.
    """
    d = RunningDaemon(conf)
    await d.start()
    yield d
    await d.halt()


@pytest.fixture
async def daemon_with(services: Services, database_url: str) -> AsyncIterator[Any]:
    """
    Start a daemon with overridden settings; returns (settings, bus) and stops both after.
    """
    started: list[tuple[RunningDaemon, Bus]] = []

    async def start(**overrides: Any) -> tuple[settings.Settings, Bus]:
        conf = make_settings(services, database_url, **overrides)
        await kafka.ensure_topics(conf.kafka_config())
        d = RunningDaemon(conf)
        await d.start()
        bus = await Bus(conf).__aenter__()
        started.append((d, bus))
        return conf, bus

    yield start
    for d, bus in started:
        await bus.__aexit__(None, None, None)
        await d.halt()
