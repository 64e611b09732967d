"""
Run ``workspaced bridge``: Coder's REST API on one side, workspaced's topics on the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import uuid
from collections.abc import Sequence
from typing import Any

from coder.client import CoderClient
from coder.errors import CoderError
from consumers import kafka
from storage.store import PostgresStateStore
from storage.watches import PostgresWatchLeases
from telemetry import logs, metrics
from telemetry.http import TelemetryServer
from workspaced.bridge.commands import CommandExecutor
from workspaced.bridge.publisher import EventPublisher
from workspaced.bridge.watches import WatchManager, WatchOptions
from workspaced.settings import Settings

log = logs.get(__name__)


class BridgeConfigError(Exception):
    """
    Raise when the bridge lacks what it needs to reach Coder.
    """


def coder_client(settings: Settings) -> CoderClient:
    """
    Return a Coder client from the settings (URL, token, TLS, timeout).
    """
    if settings.coder_url is None or settings.coder_session_token is None:
        msg = (
            "the bridge needs coder_url and coder_session_token "
            "(WORKSPACED_CODER_URL, WORKSPACED_CODER_SESSION_TOKEN)"
        )
        raise BridgeConfigError(msg)
    tls: ssl.SSLContext | bool = settings.coder_tls_verify
    if settings.coder_ca_file is not None:
        tls = ssl.create_default_context(cafile=str(settings.coder_ca_file))
    return CoderClient(
        settings.coder_url,
        settings.coder_session_token.get_secret_value(),
        ssl=tls,
        timeout_s=settings.coder_request_timeout_seconds,
    )


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """
    Bridge until ``stop`` is set (or SIGTERM/SIGINT); the command in flight is finished first.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    coder = coder_client(settings)
    config = settings.kafka_config(group_id=settings.bridge_group())
    await kafka.ensure_topics(config)
    store = await PostgresStateStore.open(
        settings.database_url.get_secret_value(), settings.topic, 4
    )
    # No linger: each event is a change the daemon answers a chat from (the
    # heartbeat ticker's beats still leave in batches, as they are sent at once).
    producer = kafka.producer(config, "workspaced-bridge", linger_ms=0)
    try:
        with kafka.translated():
            await producer.start()
        owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        publisher = EventPublisher(producer, config, settings.source + "-bridge")
        leases = PostgresWatchLeases(store.pool, owner, settings.bridge_lease_seconds)
        watches = WatchManager(
            coder,
            publisher,
            leases,
            WatchOptions(
                heartbeat_interval_s=settings.agent_heartbeat_interval_seconds,
                lease_s=settings.bridge_lease_seconds,
                max_watches=settings.bridge_max_watches,
            ),
        )
        executor = CommandExecutor(coder, publisher, watches.watch_now, stop)
        log.info(
            "bridge_started",
            coder=settings.coder_url,
            kafka=settings.kafka_bootstrap_servers,
            group=config.group_id,
            instance=owner,
        )
        tasks = [
            asyncio.create_task(_commands(config, executor, stop), name="bridge-commands"),
            asyncio.create_task(watches.run(stop), name="bridge-watches"),
        ]
        server = await _telemetry(settings, store, coder, watches)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            stop.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for result in results:
                if isinstance(result, Exception):
                    raise result
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if server is not None:
                await server.stop()
            log.info("bridge_stopped", executed=executor.executed, **vars_of(watches.stats))
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()
        await coder.close()
        await store.close()
        for sig in handled:
            loop.remove_signal_handler(sig)


async def _telemetry(
    settings: Settings, store: PostgresStateStore, coder: CoderClient, watches: WatchManager
) -> TelemetryServer | None:
    """
    Serve the bridge's /metrics, /healthz and /readyz on ``bridge_metrics_address``.
    """
    if not settings.bridge_metrics_address:
        return None

    async def postgres() -> tuple[bool, str]:
        ok = await store.healthy()
        return ok, "answers" if ok else "does not answer"

    async def coder_answers() -> tuple[bool, str]:
        try:
            version = await coder.buildinfo()
        except CoderError as exc:
            return False, str(exc)
        return True, f"Coder {version} answers"

    async def gauges() -> None:
        metrics.CODER_WATCHES_OPEN.set(len(watches.watching))

    server = TelemetryServer(
        settings.bridge_metrics_address,
        checks={"postgresql": postgres, "coder": coder_answers},
        before_scrape=gauges,
    )
    try:
        await server.start()
    except OSError as exc:
        log.warning(
            "telemetry_unavailable", address=settings.bridge_metrics_address, error=str(exc)
        )
        return None
    return server


def vars_of(stats: Any) -> dict[str, int]:
    """
    Return the counters of a stats object for a log line.
    """
    return {
        k: v for k, v in ((k, getattr(stats, k)) for k in stats.__slots__) if isinstance(v, int)
    }


async def _commands(
    config: kafka.KafkaConfig, executor: CommandExecutor, stop: asyncio.Event
) -> None:
    consumer = kafka.consumer(
        config, [config.topic("workspace_commands")], client_id="workspaced-bridge"
    )
    with kafka.translated():
        await consumer.start()
    try:
        while not stop.is_set():
            with kafka.translated():
                batch = await consumer.getmany(timeout_ms=500, max_records=200)
            if not batch:
                continue
            done = await asyncio.gather(
                *(_partition(executor, records) for records in batch.values())
            )
            offsets = {
                tp: last + 1 for tp, last in zip(batch, done, strict=True) if last is not None
            }
            if offsets:
                try:
                    with kafka.translated():
                        await consumer.commit(offsets)
                except kafka.BrokerError as exc:
                    # The partition moved on: its next owner re-reads the
                    # command, and Coder's 409 makes it a no-op.
                    log.warning("commit_failed", error=str(exc))
            unanswered = [
                tp for tp, last in zip(batch, done, strict=True) if last != batch[tp][-1].offset
            ]
            for tp in unanswered:
                # Stopping left a command unanswered: read it again next time.
                restart = done_offset(batch[tp], done[list(batch).index(tp)])
                consumer.seek(tp, restart)
    finally:
        with kafka.translated():
            await consumer.stop()


def done_offset(records: Sequence[Any], last_done: int | None) -> int:
    """
    Return the offset to read again after the last answered record (or the first).
    """
    return records[0].offset if last_done is None else last_done + 1


async def _partition(executor: CommandExecutor, records: Sequence[Any]) -> int | None:
    """
    Execute one partition's commands in order; return the offset of the last one answered.
    """
    last = None
    for record in records:
        headers = {k: (v or b"").decode(errors="replace") for k, v in record.headers}
        if not await executor.execute(headers.get("ce_type", ""), record.value):
            break
        last = record.offset
    return last
