"""
Wire the daemon: consumer, handler, outbox relay and timer scheduler in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import aiokafka

from consumers import codec, kafka
from consumers.inbound import KafkaEventConsumer
from consumers.relay import KafkaOutboxRelay
from statemachine.model import Timeouts
from storage import errors, migrate
from storage.outbox import PostgresOutbox
from storage.queries import sql
from storage.store import PostgresStateStore
from telemetry import logs
from workspaced.handler import BatchHandler, BatchReport, utcnow
from workspaced.settings import Settings
from workspaced.timers import TimerScheduler

log = logs.get(__name__)


class NotMigratedError(Exception):
    """
    Raise when the database schema is older than this daemon.
    """


def timeouts(settings: Settings) -> Timeouts:
    """
    Return the timer lengths from settings.
    """
    return Timeouts(
        build_s=settings.build_timeout_seconds,
        agent_connect_s=settings.agent_connect_timeout_seconds,
        agent_inactivity_s=settings.agent_inactivity_timeout_seconds,
        create_s=settings.create_timeout_seconds,
    )


def settings_rows(settings: Settings) -> dict[str, float]:
    """
    Return the settings the dashboard views read from ``workspaced_settings``.
    """
    return {
        "build_timeout_seconds": settings.build_timeout_seconds,
        "agent_connect_timeout_seconds": settings.agent_connect_timeout_seconds,
        "agent_inactivity_timeout_seconds": settings.agent_inactivity_timeout_seconds,
        "create_timeout_seconds": settings.create_timeout_seconds,
    }


def _retryable(exc: Exception) -> bool:
    return isinstance(exc, errors.StorageUnavailableError | errors.ConflictError)


@dataclass(slots=True)
class Stats:
    """
    Count what the daemon did since it started.
    """

    batches: int = 0
    totals: BatchReport = field(default_factory=BatchReport)


async def _check_schema(store: PostgresStateStore) -> None:
    wanted = {version for version, _ in migrate.migrations()}
    try:
        with errors.translated():
            rows = await store.pool.fetch("SELECT version FROM schema_migrations")
    except errors.StorageError as exc:
        msg = "the database has no workspaced schema; run `workspaced migrate` first"
        raise NotMigratedError(msg) from exc
    missing = wanted - {r["version"] for r in rows}
    if missing:
        msg = f"the database lacks migrations {sorted(missing)}; run `workspaced migrate`"
        raise NotMigratedError(msg)


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """
    Run until ``stop`` is set (or SIGTERM/SIGINT); finish work in flight, then return.
    """
    stop = stop or asyncio.Event()
    # From the first moment: SIGTERM during start-up stops cleanly too.
    signals = _stop_on_signals(stop)
    try:
        dsn = settings.database_url.get_secret_value()
        created = await kafka.ensure_topics(settings.kafka_config())
        if created:
            log.info("topics_created", topics=created)
        store = await PostgresStateStore.open(dsn, settings.topic, settings.database_pool_size)
        # No linger: the relay sends whole batches, which fill Kafka batches
        # by themselves, and a lone tool result should not wait.
        producer = kafka.producer(settings.kafka_config(), "workspaced-relay", linger_ms=0)
        try:
            await _check_schema(store)
            await migrate.record_settings(store.pool, settings_rows(settings))
            with kafka.translated():
                await producer.start()
            if not stop.is_set():
                await _serve(settings, store, producer, stop)
        finally:
            with contextlib.suppress(Exception):
                await producer.stop()
            await store.close()
    finally:
        loop = asyncio.get_running_loop()
        for sig in signals:
            loop.remove_signal_handler(sig)


def _stop_on_signals(stop: asyncio.Event) -> list[signal.Signals]:
    loop = asyncio.get_running_loop()
    added = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            added.append(sig)
    return added


async def _serve(
    settings: Settings,
    store: PostgresStateStore,
    producer: aiokafka.AIOKafkaProducer,
    stop: asyncio.Event,
) -> None:
    handler = BatchHandler(
        store,
        timeouts(settings),
        source=settings.source,
        dead_letter_topic=settings.topic("dead_letters"),
        max_record_bytes=settings.max_record_bytes,
    )
    scheduler = TimerScheduler(store.pool, handler, settings.timer_sweep_seconds)
    relay = KafkaOutboxRelay(
        PostgresOutbox(store.pool, settings.database_url.get_secret_value()),
        producer,
        settings.source,
        settings.outbox_sweep_seconds,
    )
    stats = Stats()

    async def handle(items: Sequence[codec.Inbound | codec.DeadLetter]) -> BatchReport:
        report = await handler.handle(items)
        stats.batches += 1
        stats.totals.add(report)
        scheduler.nudge(report.earliest_deadline)
        if report.outbox_written:
            relay.wake.set()
        return report

    consumer = KafkaEventConsumer(
        settings.kafka_config(),
        handle,
        is_retryable=_retryable,
        batch_max_records=settings.batch_max_records,
    )
    log.info(
        "daemon_started",
        kafka=settings.kafka_bootstrap_servers,
        database=settings.safe_database_url(),
        group=settings.consumer_group,
        topic_prefix=settings.topic_prefix,
    )
    tasks = {
        asyncio.create_task(consumer.run(stop), name="consumer"),
        asyncio.create_task(relay.run(stop), name="relay"),
        asyncio.create_task(scheduler.run(stop), name="timers"),
        asyncio.create_task(_prune_inbox(store, settings, stop), name="inbox-pruner"),
    }
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failed = [t for t in done if t.exception() is not None]
        if failed:
            stop.set()
            raise failed[0].exception()  # type: ignore[misc]
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        for task in tasks:
            if not task.done():
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(task), 10)
        log.info(
            "daemon_stopped",
            batches=stats.batches,
            applied=stats.totals.applied,
            duplicates=stats.totals.duplicates,
            dead_lettered=stats.totals.dead_lettered,
            transitions=stats.totals.transitions,
            published=relay.published,
            timers_fired=scheduler.fired,
        )


async def _prune_inbox(store: PostgresStateStore, settings: Settings, stop: asyncio.Event) -> None:
    while not stop.is_set():
        cutoff = utcnow() - timedelta(hours=settings.inbox_retention_hours)
        try:
            with errors.translated():
                await store.pool.execute(sql("inbox_prune"), cutoff)
        except errors.StorageError as exc:
            log.warning("inbox_prune_failed", error=str(exc))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 3600)
