"""
Publish the outbox to Kafka, in order, and forget rows only once the broker acked them.

One relay is active at a time across all instances (the outbox source hands
out leadership), so records of one key are never published out of order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Protocol

import aiokafka
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

from consumers import codec, kafka
from telemetry import logs

log = logs.get(__name__)


class Outgoing(Protocol):
    """
    One record to publish, as the outbox holds it.
    """

    @property
    def topic(self) -> str: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def ce_id(self) -> str: ...
    @property
    def ce_type(self) -> str: ...
    @property
    def ce_time(self) -> datetime: ...
    @property
    def payload(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]] | None: ...


class Claimed(Protocol):
    """
    An outbox row: its id and its record.
    """

    @property
    def id(self) -> int: ...
    @property
    def record(self) -> Outgoing: ...


class OutboxSource(Protocol):
    """
    The port the relay reads from; storage provides the PostgreSQL adapter.
    """

    def leadership(
        self, wake: asyncio.Event, stop: asyncio.Event
    ) -> AbstractAsyncContextManager[Callable[[], bool]]:
        """
        Wait until this instance leads the relay; set ``wake`` when rows are added.

        The context gives a lease: a callable that says whether the lead still holds.
        """

    async def fetch(self, limit: int) -> Sequence[Claimed]:
        """
        Return the oldest rows, in order.
        """

    async def delete(self, ids: Sequence[int]) -> None:
        """
        Forget published rows.
        """


class KafkaOutboxRelay:
    """
    Drain the outbox into Kafka; woken at commit, with a periodic sweep as a safety net.
    """

    def __init__(
        self,
        source: OutboxSource,
        producer: aiokafka.AIOKafkaProducer,
        ce_source: str,
        sweep_s: float,
    ) -> None:
        self._source = source
        self._producer = producer
        self._ce_source = ce_source
        self._sweep_s = sweep_s
        self._partitioner = DefaultPartitioner()
        self.wake = asyncio.Event()
        self.published = 0

    async def run(self, stop: asyncio.Event) -> None:
        """
        Publish until ``stop`` is set; a batch already sent is finished first.

        Losing the database or the lease ends the lead; the relay pauses and
        asks for it again, so a broken connection never stops the daemon.
        """
        while not stop.is_set():
            try:
                async with self._source.leadership(self.wake, stop) as lease:
                    if stop.is_set():
                        return
                    log.info("relay_leading")
                    await self._lead(lease, stop)
            except Exception as exc:  # noqa: BLE001 - storage trouble: lead again after a pause
                log.warning("relay_interrupted", error=str(exc))
                await _sleep_or_stop(stop, 1.0)

    async def _lead(self, lease: Callable[[], bool], stop: asyncio.Event) -> None:
        while not stop.is_set() and lease():
            self.wake.clear()  # before the fetch: a NOTIFY during it must not be lost
            try:
                sent = await self.publish_once()
            except kafka.BrokerError as exc:
                log.warning("relay_publish_failed", error=str(exc))
                await _sleep_or_stop(stop, 1.0)
                continue
            if sent:
                continue
            await _first_of(stop.wait(), self.wake.wait(), timeout_s=self._sweep_s)

    async def publish_once(self, limit: int = 1000) -> int:
        """
        Publish one batch of the oldest rows; return how many were published.
        """
        rows = await self._source.fetch(limit)
        if not rows:
            return 0
        with kafka.translated():
            futures = await self._send_all([row.record for row in rows])
            await asyncio.gather(*futures)
        await self._source.delete([row.id for row in rows])
        self.published += len(rows)
        return len(rows)

    async def _send_all(self, records: Sequence[Outgoing]) -> list[asyncio.Future[object]]:
        """
        Fill one Kafka batch per partition, in outbox order, and send them.

        aiokafka's per-record ``send`` was the relay's main cost; building the
        batches here, with the producer's own partitioner, keeps each key on
        the partition ``send`` would have chosen and in the same order.
        """
        builders: dict[tuple[str, int], BatchBuilder] = {}
        partitions: dict[str, list[int]] = {}
        chosen: dict[tuple[str, bytes | None], tuple[str, int]] = {}
        futures: list[asyncio.Future[object]] = []
        for record in records:
            if record.topic not in partitions:
                found = await self._producer.partitions_for(record.topic)
                partitions[record.topic] = sorted(found)
            where = chosen.get((record.topic, record.key))
            if where is None:  # murmur2 in Python: once per key and batch
                choices = partitions[record.topic]
                where = (record.topic, self._partitioner(record.key, choices, choices))
                if record.key is not None:  # no key: a random partition each time
                    chosen[(record.topic, record.key)] = where
            headers = self._headers(record)
            builder = builders.get(where)
            if builder is not None:
                appended = builder.append(
                    key=record.key, value=record.payload, timestamp=None, headers=headers
                )
                if appended is not None:
                    continue
                # Full: send it and start the partition's next batch.
                futures.append(
                    await self._producer.send_batch(builder, where[0], partition=where[1])
                )
            builder = builders[where] = self._producer.create_batch()
            appended = builder.append(
                key=record.key, value=record.payload, timestamp=None, headers=headers
            )
            if appended is None:
                msg = f"record {record.ce_id} does not fit in a Kafka batch"
                raise kafka.BrokerError(msg)
        for (topic, partition), builder in builders.items():
            futures.append(await self._producer.send_batch(builder, topic, partition=partition))
        return futures

    def _headers(self, record: Outgoing) -> list[tuple[str, bytes]]:
        if record.headers is not None:  # a dead letter keeps its own headers
            return list(record.headers)
        return codec.encode_headers(self._ce_source, record.ce_id, record.ce_type, record.ce_time)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    await _first_of(stop.wait(), timeout_s=seconds)


async def _first_of(*waits: object, timeout_s: float) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]  # type: ignore[call-overload]
    try:
        await asyncio.wait(tasks, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
