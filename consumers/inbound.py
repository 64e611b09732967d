"""
Consume the four input topics in one group and hand each batch to the handler.

Offsets are committed only after the handler's transaction committed (R16).
On a rebalance, revoked partitions wait for the batch in flight to finish and
commit before they are given away.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiokafka
from aiokafka.abc import ConsumerRebalanceListener

from consumers import codec, kafka
from telemetry import logs

log = logs.get(__name__)


Handle = Callable[[Sequence[codec.Inbound | codec.DeadLetter]], Awaitable[Any]]


class _FinishInFlight(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, lock: asyncio.Lock) -> None:
        self._lock = lock

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # Wait for the batch in flight: it commits its offsets before we let go.
        async with self._lock:
            log.info("partitions_revoked", partitions=len(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions_assigned", partitions=len(assigned))


class KafkaEventConsumer:
    """
    Read batches from Kafka, decode them, apply them, then commit their offsets.
    """

    def __init__(
        self,
        config: kafka.KafkaConfig,
        handle: Handle,
        *,
        is_retryable: Callable[[Exception], bool],
        batch_max_records: int = 1000,
    ) -> None:
        self._config = config
        self._batch_max_records = batch_max_records
        self._handle = handle
        self._is_retryable = is_retryable
        self._lock = asyncio.Lock()
        self._roles = {config.topic(role): role for role in kafka.INPUT_ROLES}

    async def run(self, stop: asyncio.Event) -> None:
        """
        Consume until ``stop`` is set; the batch in flight is finished and committed.

        Two stages overlap: while one batch's transaction waits on PostgreSQL,
        the next batch is fetched and decoded. Batches still commit one at a
        time, in order.
        """
        consumer = kafka.consumer(self._config, [], client_id="workspaced-consumer")
        with kafka.translated():
            await consumer.start()
        consumer.subscribe(list(self._roles), listener=_FinishInFlight(self._lock))
        in_flight: asyncio.Task[None] | None = None
        try:
            while not stop.is_set():
                with kafka.translated():
                    batch = await consumer.getmany(
                        timeout_ms=200, max_records=self._batch_max_records
                    )
                if not batch:
                    continue
                items = self._decode(batch)
                if in_flight is not None:
                    await in_flight
                in_flight = asyncio.create_task(self._apply(consumer, batch, items, stop))
            if in_flight is not None:
                await in_flight
        finally:
            if in_flight is not None and not in_flight.done():
                in_flight.cancel()
            with kafka.translated():
                await consumer.stop()

    def _decode(self, batch: dict[Any, list[Any]]) -> list[codec.Inbound | codec.DeadLetter]:
        limit = self._config.max_record_bytes
        return [
            codec.decode(
                codec.RawRecord(
                    self._roles[tp.topic],
                    tp.topic,
                    tp.partition,
                    r.offset,
                    r.key,
                    r.value,
                    tuple(r.headers),
                ),
                limit,
            )
            for tp, records in batch.items()
            for r in records
        ]

    async def _apply(
        self,
        consumer: aiokafka.AIOKafkaConsumer,
        batch: dict[Any, list[Any]],
        items: list[codec.Inbound | codec.DeadLetter],
        stop: asyncio.Event,
    ) -> None:
        async with self._lock:
            # A rebalance may have taken partitions since this batch was fetched:
            # their new owner applies those records.
            owned = consumer.assignment()
            if any(tp not in owned for tp in batch):
                batch = {tp: records for tp, records in batch.items() if tp in owned}
                kept = {(tp.topic, tp.partition) for tp in batch}
                items = [i for i in items if (i.record.topic, i.record.partition) in kept]
            if items and await self._handle_until_done(items, stop):
                await self._commit(consumer, batch)

    async def _handle_until_done(
        self, items: list[codec.Inbound | codec.DeadLetter], stop: asyncio.Event
    ) -> bool:
        delay_s = 0.2
        while True:
            try:
                await self._handle(items)
            except Exception as exc:
                if not self._is_retryable(exc):
                    raise
                log.warning("batch_retrying", error=str(exc), retry_in_s=delay_s)
                try:
                    await asyncio.wait_for(stop.wait(), delay_s)
                except TimeoutError:
                    delay_s = min(delay_s * 2, 10.0)
                    continue
                return False  # stopping: leave the offsets uncommitted
            return True

    async def _commit(
        self, consumer: aiokafka.AIOKafkaConsumer, batch: dict[Any, list[Any]]
    ) -> None:
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
        try:
            with kafka.translated():
                await consumer.commit(offsets)
        except kafka.BrokerError as exc:
            # Our partitions moved on: the next owner re-reads them and the
            # inbox turns what we already applied into no-ops.
            log.warning("commit_failed", error=str(exc))
