"""
Wire the daemon: consumer, handler, outbox relay and timer scheduler in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aiokafka

from consumers import codec, kafka
from consumers.inbound import KafkaEventConsumer, PartitionMark
from consumers.relay import KafkaOutboxRelay
from statemachine.model import Timeouts
from storage import errors, migrate, outbox, retention
from storage.outbox import PostgresOutbox
from storage.queries import sql
from storage.store import PostgresStateStore
from telemetry import logs, metrics
from telemetry.http import TelemetryServer
from workspaced.handler import BatchHandler, BatchReport, TimerGate, observe, utcnow
from workspaced.settings import Settings
from workspaced.timers import TimerScheduler

log = logs.get(__name__)
# How long work in flight may finish after a stop before it is cancelled.
SHUTDOWN_GRACE_S = 10.0
# How long cancelled work may take to unwind (roll back, leave the group).
_CANCELLED_WAIT_S = 5.0


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
        wait_for_startup_scripts=settings.wait_for_startup_scripts,
        startup_script_s=settings.startup_script_timeout_seconds,
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
    if isinstance(exc, errors.StorageUnavailableError):
        metrics.STORAGE_ERRORS.labels("unavailable").inc()
        return True
    if isinstance(exc, errors.ConflictError):
        metrics.STORAGE_ERRORS.labels("conflict").inc()
        return True
    metrics.STORAGE_ERRORS.labels("other").inc()
    return False


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


async def run(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    shutdown_grace_s: float = SHUTDOWN_GRACE_S,
) -> None:
    """
    Run until ``stop`` is set (or SIGTERM/SIGINT); finish work in flight, then return.

    Work still running ``shutdown_grace_s`` after the stop is cancelled and
    awaited (its offsets stay uncommitted, so it is done again later); the
    producer and the pool close only after every task ended.
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
                await _serve(settings, store, producer, stop, shutdown_grace_s)
        finally:
            with contextlib.suppress(Exception):
                await producer.stop()
            await _close(store)
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
    grace_s: float,
) -> None:
    handler = BatchHandler(
        store,
        timeouts(settings),
        source=settings.source,
        dead_letter_topic=settings.topic("dead_letters"),
        max_record_bytes=settings.max_record_bytes,
        timer_gate=TimerGate(
            tuple(settings.topic(role) for role in kafka.INPUT_ROLES),
            settings.timer_watermark_max_lag_seconds,
            utcnow(),
        ),
    )
    scheduler = TimerScheduler(store.pool, handler, settings.timer_sweep_seconds)
    relay = KafkaOutboxRelay(
        PostgresOutbox(store.pool, settings.database_url.get_secret_value()),
        producer,
        settings.source,
        settings.outbox_sweep_seconds,
    )
    stats = Stats()

    async def handle(
        items: Sequence[codec.Inbound | codec.DeadLetter], marks: Sequence[PartitionMark] = ()
    ) -> BatchReport:
        began = time.perf_counter()
        report = await handler.handle(items, marks)
        if items:
            metrics.BATCH_DURATION.observe(time.perf_counter() - began)
            metrics.BATCH_RECORDS.observe(len(items))
            stats.batches += 1
        observe(report)
        stats.totals.add(report)
        scheduler.nudge(report.earliest_deadline)
        if report.marks_written:
            scheduler.watermarks_moved()
        if report.outbox_written:
            relay.wake.set()
        return report

    consumer = KafkaEventConsumer(
        settings.kafka_config(),
        handle,
        is_retryable=_retryable,
        batch_max_records=settings.batch_max_records,
        watermarks=True,
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
        asyncio.create_task(_prune(store, settings, stop), name="pruner"),
    }
    server = await _telemetry(settings, store, consumer)
    try:
        await _until_stopped_or_failed(tasks, stop)
    finally:
        stop.set()
        await _wind_down(tasks, grace_s)
        if server is not None:
            await server.stop()
        log.info(
            "daemon_stopped",
            batches=stats.batches,
            applied=stats.totals.applied,
            duplicates=stats.totals.duplicates,
            dead_lettered=stats.totals.dead_lettered,
            transitions=stats.totals.transitions,
            published=relay.published,
            parked=relay.parked,
            dropped=consumer.dropped,
            timers_fired=scheduler.fired,
        )
    failed = [t.exception() for t in tasks if not t.cancelled() and t.exception() is not None]
    if failed:
        raise failed[0]  # type: ignore[misc]


async def _telemetry(
    settings: Settings, store: PostgresStateStore, consumer: KafkaEventConsumer
) -> TelemetryServer | None:
    """
    Serve /metrics, /healthz and /readyz on ``metrics_address`` (none when it is empty).
    """
    if not settings.metrics_address:
        return None

    async def postgres() -> tuple[bool, str]:
        ok = await store.healthy()
        return ok, "answers" if ok else "does not answer"

    async def partitions() -> tuple[bool, str]:
        held = consumer.partitions_held
        if held:
            return True, f"holds {held} input partitions"
        return False, "holds no input partition (joining, or more instances than partitions)"

    async def relay_leader() -> tuple[bool, str]:
        known = await outbox.leader_known(store.pool)
        return known, "an instance leads the relay" if known else "no instance leads the relay"

    async def gauges() -> None:
        with errors.translated():
            row = await store.pool.fetchrow(sql("metrics_gauges"))
        metrics.OUTBOX_ROWS.set(row["outbox_rows"])
        metrics.OUTBOX_OLDEST_AGE.set(row["outbox_oldest_age_s"])
        metrics.TIMERS_PENDING.set(row["timers_pending"])

    server = TelemetryServer(
        settings.metrics_address,
        checks={"postgresql": postgres, "partitions": partitions, "relay_leader": relay_leader},
        before_scrape=gauges,
    )
    try:
        await server.start()
    except OSError as exc:
        # A busy port must not stop the daemon: it works without its probes.
        log.warning("telemetry_unavailable", address=settings.metrics_address, error=str(exc))
        return None
    return server


async def _until_stopped_or_failed(tasks: set[asyncio.Task[None]], stop: asyncio.Event) -> None:
    """
    Return once ``stop`` is set, a task failed, or every task ended.

    Waiting for the tasks alone would wait for work in flight with no bound:
    the grace period starts at the stop.
    """
    stopped: asyncio.Task[Any] = asyncio.create_task(stop.wait(), name="stop-waiter")
    try:
        running: set[asyncio.Task[Any]] = set(tasks)
        while running and not stop.is_set():
            done, running = await asyncio.wait(
                running | {stopped}, return_when=asyncio.FIRST_COMPLETED
            )
            running.discard(stopped)
            if any(t is not stopped and not t.cancelled() and t.exception() for t in done):
                return
    finally:
        stopped.cancel()
        await asyncio.gather(stopped, return_exceptions=True)


async def _wind_down(tasks: set[asyncio.Task[None]], grace_s: float) -> None:
    """
    Give running tasks ``grace_s`` to finish, then cancel and await the rest.

    Every task ends here, or is reported by name: none is left running under
    a closing producer and pool, and none is destroyed while pending.
    """
    running = {t for t in tasks if not t.done()}
    if running:
        _, running = await asyncio.wait(running, timeout=grace_s)
    for task in running:
        log.warning("daemon_task_cancelled", task=task.get_name(), grace_s=grace_s)
        task.cancel()
    if running:
        _, running = await asyncio.wait(running, timeout=_CANCELLED_WAIT_S)
    for task in running:
        log.error("daemon_task_abandoned", task=task.get_name())
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("daemon_task_failed", task=task.get_name(), error=str(task.exception()))


async def _close(store: PostgresStateStore) -> None:
    """
    Close the pool; terminate it when a connection is never given back.
    """
    try:
        await asyncio.wait_for(store.close(), _CANCELLED_WAIT_S)
    except (TimeoutError, errors.StorageError) as exc:
        log.warning("database_pool_terminated", error=str(exc) or type(exc).__name__)
        store.pool.terminate()


async def _prune(store: PostgresStateStore, settings: Settings, stop: asyncio.Event) -> None:
    """
    Prune what retention allows, in small batches, at start and then hourly.
    """
    while not stop.is_set():
        now = utcnow()
        try:
            pruned = await retention.prune(
                store.pool,
                inbox_before=now - timedelta(hours=settings.inbox_retention_hours),
                calls_before=now - timedelta(hours=settings.tool_call_retention_hours),
                history_before=now - timedelta(hours=settings.history_retention_hours),
                facts_before=now - timedelta(hours=settings.facts_retention_hours),
            )
        except errors.StorageError as exc:
            log.warning("prune_failed", error=str(exc))
        else:
            if any(pruned.values()):
                log.info("pruned", **pruned)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 3600)
