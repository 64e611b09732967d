"""
Consume the four input topics in one group and hand each batch to the handler.

Offsets are committed only after the handler's transaction committed (R16).
On a rebalance, revoked partitions wait for the batch in flight to finish and
commit before they are given away.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import aiokafka
from aiokafka.abc import ConsumerRebalanceListener

from consumers import codec, kafka
from workspaced import logs
from workspaced.settings import Settings

log = logs.get(__name__)


class Report(Protocol):
    """
    What the handler reports back about a batch.
    """

    applied: int
    dead_lettered: int


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
        settings: Settings,
        handle: Handle,
        *,
        is_retryable: Callable[[Exception], bool],
    ) -> None:
        self._settings = settings
        self._handle = handle
        self._is_retryable = is_retryable
        self._lock = asyncio.Lock()
        self._roles = {settings.topic(role): role for role in kafka.INPUT_ROLES}
        self.idle = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """
        Consume until ``stop`` is set; the batch in flight is finished and committed.
        """
        consumer = kafka.consumer(self._settings, [], client_id="workspaced-consumer")
        with kafka.translated():
            await consumer.start()
        consumer.subscribe(list(self._roles), listener=_FinishInFlight(self._lock))
        try:
            while not stop.is_set():
                with kafka.translated():
                    batch = await consumer.getmany(
                        timeout_ms=200, max_records=self._settings.batch_max_records
                    )
                if not batch:
                    self.idle.set()
                    continue
                self.idle.clear()
                async with self._lock:
                    if await self._apply(batch, stop):
                        await self._commit(consumer, batch)
        finally:
            with kafka.translated():
                await consumer.stop()

    async def _apply(self, batch: dict[Any, list[Any]], stop: asyncio.Event) -> bool:
        items = [
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
                self._settings.max_record_bytes,
            )
            for tp, records in batch.items()
            for r in records
        ]
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
