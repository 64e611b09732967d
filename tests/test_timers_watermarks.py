"""
Timers never outrun their inputs (issue 9, item 1).

A durable timer fires only once every input partition is applied past its
deadline (its watermark in ``input_watermarks``). The gate alone, driven
through the handler against the session's PostgreSQL with a clock the test
holds; the consumer writing watermarks on the real broker; and the outage
that used to end in a false timeout, with the real ``workspaced run`` process
SIGKILLed and restarted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from structlog.testing import capture_logs

from consumers import kafka
from consumers.inbound import KafkaEventConsumer, PartitionMark
from statemachine.model import Timeouts
from storage.store import PostgresStateStore
from tests.bus import OWNER_ID, Bus, new_id
from tests.conftest import Services, make_settings
from workspaced.handler import BatchHandler, TimerGate
from workspaced.settings import Settings

IN_A, IN_B = "t.in.a", "t.in.b"
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s} s for {what}")
        await asyncio.sleep(0.05)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[PostgresStateStore]:
    store = await PostgresStateStore.open(database_url, lambda role: f"t.{role}", 2)
    yield store
    await store.close()


def _handler(
    store: PostgresStateStore, clock: Clock, *, watching_since: datetime, max_lag_s: float = 60
) -> BatchHandler:
    gate = TimerGate((IN_A, IN_B), max_lag_s, watching_since)
    return BatchHandler(
        store, Timeouts(), source="test", dead_letter_topic="t.dead", clock=clock, timer_gate=gate
    )


async def _building(db: asyncpg.Connection, deadline: datetime) -> str:
    """
    Add a chat that waits for its build until ``deadline``; return its id.
    """
    chat = new_id()
    await db.execute(
        "INSERT INTO chat_workspaces (chat_id, owner_id, state, workspace_id, workspace_name,"
        " owner_name, build_id, job_id, template_id, command_id, requested_name,"
        " state_entered_at, deadline_at, version, created_at, updated_at)"
        " VALUES ($1, $2, 'building', $3, 'dev', 'alice', $4, $5, $6, $7, 'dev',"
        " $8, $9, 2, $8, $8)",
        chat,
        OWNER_ID,
        new_id(),
        new_id(),
        new_id(),
        new_id(),
        new_id(),
        deadline - timedelta(seconds=600),
        deadline,
    )
    return chat


def _caught_up(topic: str, partition: int, at: datetime, offset: int = 0) -> PartitionMark:
    return PartitionMark(topic, partition, offset, None, at)


async def _state(db: asyncpg.Connection, chat: str) -> tuple[str, str | None]:
    row = await db.fetchrow(
        "SELECT state, last_error FROM chat_workspaces WHERE chat_id = $1", chat
    )
    return row["state"], row["last_error"]


# The gate, through the handler.


async def test_a_due_timer_waits_until_every_input_partition_is_applied_past_its_deadline(
    store: PostgresStateStore, db: asyncpg.Connection
) -> None:
    clock = Clock(T0)
    handler = _handler(store, clock, watching_since=T0 - timedelta(hours=1))
    deadline = T0 - timedelta(seconds=5)
    chat = await _building(db, deadline)
    await handler.handle(
        [],
        [
            _caught_up(IN_A, 0, deadline - timedelta(seconds=1)),  # behind the deadline
            PartitionMark(IN_B, 0, 7, deadline + timedelta(seconds=1), None),  # a record past it
            _caught_up(IN_B, 1, T0),
            _caught_up("t.not.an.input", 0, deadline - timedelta(hours=1)),
        ],
    )
    assert await handler.fire_timers() == (0, None)
    assert await _state(db, chat) == ("building", None)

    # Partition a:0 is applied past the deadline: nothing holds the timer now.
    await handler.handle([], [_caught_up(IN_A, 0, deadline + timedelta(milliseconds=1), 3)])
    fired, _ = await handler.fire_timers()
    assert fired == 1
    assert await _state(db, chat) == ("failed", "timed out waiting for workspace build")


async def test_a_deadline_not_reached_does_not_fire_whatever_the_watermarks(
    store: PostgresStateStore, db: asyncpg.Connection
) -> None:
    clock = Clock(T0)
    handler = _handler(store, clock, watching_since=T0 - timedelta(hours=1))
    chat = await _building(db, T0 + timedelta(seconds=1))
    await handler.handle([], [_caught_up(IN_A, 0, T0 + timedelta(hours=1))])
    assert await handler.fire_timers() == (0, None)
    assert await _state(db, chat) == ("building", None)


async def test_a_watermark_never_moves_back_and_is_dated_only_when_it_moves(
    store: PostgresStateStore, db: asyncpg.Connection
) -> None:
    clock = Clock(T0)
    handler = _handler(store, clock, watching_since=T0)
    await handler.handle([], [PartitionMark(IN_A, 0, 10, T0, T0)])
    clock.now = T0 + timedelta(seconds=30)
    # Another member, re-reading from an older committed offset, reports less.
    report = await handler.handle([], [PartitionMark(IN_A, 0, 4, T0 - timedelta(seconds=9), None)])
    assert report.marks_written == 1
    row = await db.fetchrow("SELECT * FROM input_watermarks WHERE topic = $1", IN_A)
    assert (row["applied_offset"], row["record_time"], row["caught_up_at"]) == (10, T0, T0)
    assert row["updated_at"] == T0, "no progress, no new date"


# A partition whose owner is gone or stuck.


async def test_a_partition_that_stopped_moving_holds_timers_back_only_for_the_max_lag(
    store: PostgresStateStore, db: asyncpg.Connection
) -> None:
    clock = Clock(T0 - timedelta(seconds=30))
    handler = _handler(store, clock, watching_since=T0 - timedelta(hours=1), max_lag_s=60)
    deadline = T0 - timedelta(seconds=1)
    chat = await _building(db, deadline)
    # b:0's last word, 30 s ago: caught up well before the deadline. Then nothing.
    await handler.handle([], [_caught_up(IN_B, 0, deadline - timedelta(seconds=40))])
    clock.now = T0
    await handler.handle([], [_caught_up(IN_A, 0, T0)])  # a:0 keeps moving
    assert await handler.fire_timers() == (0, None)

    clock.now = T0 + timedelta(seconds=30, milliseconds=1)  # b:0 still for over 60 s
    with capture_logs() as logs:
        fired, _ = await handler.fire_timers()
    assert fired == 1
    assert await _state(db, chat) == ("failed", "timed out waiting for workspace build")
    (line,) = [e for e in logs if e["event"] == "timer_fired_without_watermark"]
    assert line["chat_id"] == chat
    assert line["partitions"] == [f"{IN_B}:0"]


async def test_after_a_restart_a_still_partition_is_waited_for_a_max_lag_from_the_start(
    store: PostgresStateStore, db: asyncpg.Connection
) -> None:
    # Every watermark was last moved before the outage, ten minutes ago: what
    # counts is whether the group moves them once this instance is back.
    started = T0
    clock = Clock(T0 - timedelta(minutes=10))
    handler = _handler(store, clock, watching_since=started, max_lag_s=60)
    deadline = T0 - timedelta(minutes=5)
    chat = await _building(db, deadline)
    await handler.handle([], [_caught_up(IN_A, 0, clock.now), _caught_up(IN_B, 0, clock.now)])
    clock.now = T0 + timedelta(seconds=59)
    assert await handler.fire_timers() == (0, None)
    clock.now = T0 + timedelta(seconds=61)
    fired, _ = await handler.fire_timers()
    assert fired == 1
    assert await _state(db, chat) == ("failed", "timed out waiting for workspace build")


# The consumer writes the watermarks, on the real broker.


async def test_the_consumer_marks_idle_partitions_caught_up_and_applied_records_with_their_time(
    conf: Settings, bus: Bus, store: PostgresStateStore, db: asyncpg.Connection
) -> None:
    handler = BatchHandler(store, Timeouts(), source="test", dead_letter_topic="t.dead")
    consumer = KafkaEventConsumer(
        conf.kafka_config(), handler.handle, is_retryable=lambda _: False, watermarks=True
    )
    inputs = [conf.topic(role) for role in kafka.INPUT_ROLES]
    partitions = len(inputs) * conf.topic_partitions
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:

        async def all_caught_up() -> bool:
            n = await db.fetchval(
                "SELECT count(*) FROM input_watermarks"
                " WHERE topic = ANY($1) AND caught_up_at IS NOT NULL",
                inputs,
            )
            return bool(n == partitions)

        await _until(all_caught_up, "every input partition to be marked caught up")
        sent_from = datetime.now(UTC).replace(microsecond=0)
        await bus.tool_call(new_id(), name="dev")
        sent_by = datetime.now(UTC) + timedelta(seconds=1)

        async def applied() -> bool:
            row = await db.fetchrow(
                "SELECT * FROM input_watermarks WHERE topic = $1 AND applied_offset = 1",
                conf.topic("tool_calls"),
            )
            return row is not None and row["caught_up_at"] >= row["record_time"]

        await _until(applied, "the tool call's partition to be marked applied and caught up")
        row = await db.fetchrow(
            "SELECT * FROM input_watermarks WHERE topic = $1 AND applied_offset = 1",
            conf.topic("tool_calls"),
        )
        assert sent_from <= row["record_time"] <= sent_by
        assert await db.fetchval("SELECT count(*) FROM chat_workspaces") == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


# The outage, with the real daemon process (the false timeout of issue 9).


def _env(conf: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKSPACED_")}
    logs = {"WORKSPACED_LOG_FORMAT": "json", "WORKSPACED_LOG_LEVEL": "info"}
    return env | conf.environment() | logs


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[[Settings], subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(conf: Settings) -> subprocess.Popen[bytes]:
        with (tmp_path / f"run-{len(started)}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "workspaced.cli", "run"],
                env=_env(conf),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in started:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _wait_until(moment: datetime) -> None:
    """
    Wait until the wall clock has passed ``moment`` (the premise of the test, not a sync).
    """
    while (left := (moment - datetime.now(UTC)).total_seconds()) > 0:
        await asyncio.sleep(min(left, 0.5))


@pytest.mark.e2e
async def test_a_build_that_succeeded_during_an_outage_longer_than_its_timeout_is_not_a_timeout(
    services: Services,
    database_url: str,
    db: asyncpg.Connection,
    daemons: Callable[[Settings], subprocess.Popen[bytes]],
) -> None:
    conf = make_settings(services, database_url, build_timeout_seconds=8.0)
    migrated = subprocess.run(
        [sys.executable, "-m", "workspaced.cli", "migrate"],
        env=_env(conf),
        capture_output=True,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stderr.decode()
    await kafka.ensure_topics(conf.kafka_config())
    async with Bus(conf) as bus:
        daemon = daemons(conf)
        chat = new_id()
        call = await bus.tool_call(chat, name="alpha")
        (command,) = await bus.command_for(chat, timeout_s=60)
        ws = await bus.created(command)
        await bus.wait_for(
            "workspace_events",
            lambda r: r.data["chat_id"] == chat and r.data["to_state"] == "building",
        )
        deadline: datetime = await db.fetchval(
            "SELECT deadline_at FROM chat_workspaces WHERE chat_id = $1", chat
        )
        daemon.kill()  # SIGKILL: the only daemon, mid-build
        assert daemon.wait(30) == -signal.SIGKILL

        # While it is down, Coder finishes the build and the agent connects:
        # all of it in Kafka before the deadline.
        agent = new_id()
        await bus.job(ws, "running")
        await bus.job(ws, "succeeded", agents=[agent])
        await bus.heartbeat(agent, ws["workspace_id"])
        assert datetime.now(UTC) < deadline, "the machine was too slow for the premise"

        await _wait_until(deadline + timedelta(seconds=2))  # back ~10 s after the kill
        daemons(conf)
        (result,) = await bus.results_for(call, timeout_s=60)
        assert result["content"] == {"created": True, "workspace_name": "alice/alpha"}
        triggers = [
            r["trigger"]
            for r in await db.fetch(
                "SELECT trigger FROM workspace_transitions WHERE chat_id = $1 ORDER BY version",
                chat,
            )
        ]
        assert "build_timed_out" not in triggers
        assert await _state(db, chat) == ("ready", None)
        assert not [e for e in bus.events_for(chat) if e.data["to_state"] == "failed"]
