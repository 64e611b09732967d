"""
The consumer loop, the outbox relay and the daemon's shutdown under failure (issues 9 and 14).

Each test drives the real adapters against the session's PostgreSQL and broker:
a batch that fails for good, a batch that outlives its partition, a stop while
a batch waits on a row lock, and records the broker refuses for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumers import codec, kafka
from consumers.inbound import KafkaEventConsumer
from consumers.relay import KafkaOutboxRelay
from storage.outbox import PostgresOutbox
from tests.bus import Bus, new_id
from tests.conftest import Services, make_settings
from workspaced import daemon
from workspaced.settings import Settings


class _NotApplicableError(Exception):
    """
    Stand for a failure no retry can fix (a bug, a constraint the data breaks).
    """


async def _until(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool], what: str, timeout_s: float = 30.0
) -> None:
    """
    Wait until ``check`` holds, looking again every few milliseconds; fail after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s} s for {what}")
        await asyncio.sleep(0.02)


async def _finish(task: asyncio.Task[Any], stop: asyncio.Event) -> None:
    stop.set()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, 30)


# 1. A failed in-flight batch stops the consumer at once (issue 14, defect 8).


async def test_a_batch_that_fails_for_good_stops_the_consumer_at_once_when_no_record_follows(
    conf: Settings, bus: Bus
) -> None:
    called = asyncio.Event()

    async def handle(_items: Sequence[codec.Inbound | codec.DeadLetter]) -> None:
        called.set()
        raise _NotApplicableError

    consumer = KafkaEventConsumer(conf.kafka_config(), handle, is_retryable=lambda _: False)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await bus.tool_call(new_id(), name="dev")  # one record, and nothing after it
        await asyncio.wait_for(called.wait(), 30)
        done, _ = await asyncio.wait({task}, timeout=5)
        assert task in done, "the consumer kept running after its batch failed for good"
        with pytest.raises(_NotApplicableError):
            task.result()
    finally:
        await _finish(task, stop)


# 2. A batch fetched before its partition left and came back (issue 14).


def _other_member_takes_over(config: kafka.KafkaConfig, tp: TopicPartition) -> None:
    """
    Join the group from another thread, read offsets 0 to 3, commit 4 and leave.
    """

    async def take_over() -> None:
        producer = kafka.producer(config, "test-other-producer", linger_ms=0)
        other = kafka.consumer(config, [], client_id="test-other-member")
        await producer.start()
        await other.start()
        try:
            other.subscribe([config.topic(role) for role in kafka.INPUT_ROLES])
            for _ in range(2):  # offsets 2 and 3
                await producer.send_and_wait(tp.topic, b"{}", key=b"k", partition=tp.partition)
            seen: list[int] = []

            async def read_on() -> bool:
                batch = await other.getmany(timeout_ms=100)
                seen.extend(r.offset for r in batch.get(tp, []))
                return 3 in seen

            await _until(read_on, "the other member to read offsets 0 to 3", timeout_s=60)
            await other.commit({tp: 4})
        finally:
            await other.stop()  # leaves: the partition goes back to the first member
            await producer.stop()

    asyncio.run(take_over())


async def test_a_batch_fetched_before_its_partition_left_and_came_back_is_neither_applied_nor_committed(
    services: Services, database_url: str
) -> None:
    conf = make_settings(services, database_url, topic_partitions=1)
    config = conf.kafka_config()
    await kafka.ensure_topics(config)
    tp = TopicPartition(config.topic("tool_calls"), 0)
    handled: list[int] = []
    first_started, stall = asyncio.Event(), asyncio.Event()
    took_over: list[BaseException | None] = []

    def take_over() -> None:
        try:
            _other_member_takes_over(config, tp)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            took_over.append(exc)
        else:
            took_over.append(None)

    async def handle(items: Sequence[codec.Inbound | codec.DeadLetter]) -> None:
        handled.extend(item.record.offset for item in items)
        if not first_started.is_set():
            first_started.set()
            await stall.wait()
            # The long apply: the member's event loop stalls (as under a CPU-bound
            # batch), sends no heartbeat, and the group goes on without it while
            # another member reads the partition on and commits.
            other = threading.Thread(target=take_over)
            other.start()
            other.join(90)

    member = KafkaEventConsumer(config, handle, is_retryable=lambda _: False)
    producer = kafka.producer(config, "test-producer", linger_ms=0)
    await producer.start()

    async def send() -> None:
        await producer.send_and_wait(tp.topic, b"{}", key=b"k", partition=tp.partition)

    stop = asyncio.Event()
    task = asyncio.create_task(member.run(stop))
    try:
        await send()  # offset 0: the long apply
        await asyncio.wait_for(first_started.wait(), 30)
        await send()  # offset 1: fetched while offset 0 is applied
        await _until(lambda: member.fetched >= 2, "the member to fetch offset 1")
        stall.set()
        await _until(lambda: bool(took_over), "the other member to take over", timeout_s=120)
        assert took_over == [None]
        await send()  # offset 4
        await _until(lambda: 4 in handled, "the first member to apply offset 4", timeout_s=60)

        async def committed_5() -> bool:
            return (await _committed(config, tp)) == 5

        await _until(committed_5, "offset 5 to be committed")
        # Offset 0 was in flight when the partition left; 1 to 3 were the other
        # member's: applying them again would commit behind what it committed.
        assert handled == [0, 4]
    finally:
        stall.set()
        await _finish(task, stop)
        await producer.stop()


async def _committed(config: kafka.KafkaConfig, tp: TopicPartition) -> int | None:
    """
    Return the group's committed offset of ``tp``, asked without joining the group.
    """
    reader = kafka.consumer(config, [], client_id="test-offsets")
    await reader.start()
    try:
        offset: int | None = await reader.committed(tp)
        return offset
    finally:
        await reader.stop()


# 3. Shutdown while a batch waits on PostgreSQL (issue 14).


async def test_stopping_while_a_batch_waits_on_a_row_lock_ends_every_task_after_the_grace_period(
    conf: Settings, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    grace_s = 1.0
    stop = asyncio.Event()
    async with Bus(conf) as bus:
        before = asyncio.all_tasks()
        run = asyncio.create_task(daemon.run(conf, stop, shutdown_grace_s=grace_s))
        lock = db.transaction()
        try:
            chat = new_id()
            await bus.tool_call(chat, name="dev")
            (command,) = await bus.command_for(chat)
            await lock.start()
            await db.execute("SELECT 1 FROM chat_workspaces WHERE chat_id = $1 FOR UPDATE", chat)
            await bus.created(command)  # its batch waits on our row lock

            async def batch_waits() -> bool:
                waiting = await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
                return bool(waiting)

            await _until(batch_waits, "the batch to wait on the row lock")
            stop.set()
            began = time.monotonic()
            done, _ = await asyncio.wait({run}, timeout=grace_s + 15)
            took_s = time.monotonic() - began
        finally:
            stop.set()
            await lock.rollback()
            if not run.done():
                run.cancel()
                with contextlib.suppress(BaseException):
                    await run
    assert run in done, "run() did not return after the grace period"
    run.result()
    assert grace_s <= took_s < grace_s + 10
    current = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
    assert left == [], f"tasks still running after run() returned: {left}"
    gc.collect()
    destroyed = [r for r in caplog.records if "Task was destroyed" in r.getMessage()]
    assert destroyed == []
    # The batch was cancelled, not committed: the chat still waits for Coder.
    state = await db.fetchval("SELECT state FROM chat_workspaces WHERE chat_id = $1", chat)
    assert state == "creating"


# 4. The relay never blocks on a record the broker refuses for good (issue 9).


async def _add(db: asyncpg.Connection, topic: str, key: bytes, ce_id: str, payload: bytes) -> None:
    await db.execute(
        "INSERT INTO outbox (topic, key, ce_id, ce_type, ce_time, payload)"
        " VALUES ($1, $2, $3, 'test.record.v1', $4, $5)",
        topic,
        key,
        ce_id,
        datetime.now(UTC),
        payload,
    )


@contextlib.asynccontextmanager
async def _relaying(
    conf: Settings, db: asyncpg.Connection, database_url: str
) -> AsyncIterator[KafkaOutboxRelay]:
    del db
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    producer = kafka.producer(conf.kafka_config(), "test-relay", linger_ms=0)
    await producer.start()
    relay = KafkaOutboxRelay(PostgresOutbox(pool, database_url), producer, "test", sweep_s=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield relay
    finally:
        await _finish(task, stop)
        await producer.stop()
        await pool.close()


async def _outbox_empty(db: asyncpg.Connection) -> bool:
    return bool(await db.fetchval("SELECT count(*) = 0 FROM outbox"))


async def test_a_record_too_large_for_the_broker_is_parked_and_the_records_behind_it_are_published(
    conf: Settings, bus: Bus, db: asyncpg.Connection, database_url: str, services: Services
) -> None:
    topic = conf.topic("tool_results")
    # Over the producer's max_request_size (about 1.06 MiB): refused before sending.
    too_large = b"x" * 2_000_000
    # Between Apache Kafka's default message.max.bytes (1 MiB + 12) and that:
    # the broker refuses it; Tansu has no such limit and takes it.
    over_broker_limit = b"y" * 1_070_000
    await _add(db, topic, b"a", "a1", b"{}")
    await _add(db, topic, b"a", "a-too-large", too_large)
    await _add(db, topic, b"a", "a2", b"{}")
    await _add(db, topic, b"b", "b-over-broker-limit", over_broker_limit)
    await _add(db, topic, b"b", "b1", b"{}")
    await _add(db, topic, b"a", "a3", b"{}")
    async with _relaying(conf, db, database_url) as relay:
        await _until(lambda: _outbox_empty(db), "the outbox to drain", timeout_s=60)
        parked = {
            r["ce_id"]: r["error"]
            for r in await db.fetch("SELECT ce_id, error FROM outbox_parked ORDER BY id")
        }
        refused_by_broker = services.broker_kind != "tansu"
        expected = {"a-too-large"} | ({"b-over-broker-limit"} if refused_by_broker else set())
        assert set(parked) == expected
        assert all("MessageSizeTooLargeError" in error for error in parked.values())
        assert relay.parked == len(expected)
        published = ["a1", "a2", "b1", "a3"]
        if not refused_by_broker:
            published.insert(2, "b-over-broker-limit")
        found = await bus.wait_for(
            "tool_results", lambda r: r.headers.get("ce_id") in published, len(published)
        )
        order = [r.headers["ce_id"] for r in found]
        assert [i for i in order if i.startswith("a")] == ["a1", "a2", "a3"]
        assert [i for i in order if i.startswith("b")] == [i for i in published if i[0] == "b"]


async def test_a_batch_the_broker_refuses_whole_is_sent_again_record_by_record_in_key_order(
    conf: Settings, db: asyncpg.Connection, database_url: str
) -> None:
    # A topic whose records may be at most 100 kB: four 40 kB records of one
    # key fill one 160 kB Kafka batch, which Apache Kafka refuses whole
    # although each record alone fits (Tansu ignores the limit: it takes all).
    topic = conf.topic_prefix + "small-records"
    admin = AIOKafkaAdminClient(**kafka.common(conf.kafka_config(), "test-admin"))
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "100000"})]
        )
    finally:
        await admin.close()
    ids = [f"k{i}" for i in range(4)]
    for ce_id in ids:
        await _add(db, topic, b"k", ce_id, b"z" * 40_000)
    async with _relaying(conf, db, database_url) as relay:
        await _until(lambda: _outbox_empty(db), "the outbox to drain", timeout_s=60)
        assert relay.parked == 0
    reader = kafka.consumer(conf.kafka_config(), [], client_id="test-reader", group_id=None)
    await reader.start()
    try:
        tp = TopicPartition(topic, 0)
        reader.assign([tp])
        await reader.seek_to_beginning(tp)
        got: list[str] = []

        async def read_all() -> bool:
            batch = await reader.getmany(timeout_ms=100)
            got.extend(dict(r.headers)["ce_id"].decode() for r in batch.get(tp, []))
            return len(got) >= len(ids)

        await _until(read_all, "the four records")
        assert got == ids
    finally:
        await reader.stop()
