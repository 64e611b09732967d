"""
Smoke tests: the session really talks to PostgreSQL and a Kafka broker.
"""

from __future__ import annotations

import uuid

import asyncpg
from aiokafka import AIOKafkaConsumer

from consumers import kafka
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
