"""
Consume the four input topics in one group and hand each batch to the handler.

Offsets are committed only after the handler's transaction committed (R16).
On a rebalance, revoked partitions wait for the batch in flight to finish and
commit before they are given away.

A batch is applied and committed only under the assignment it was fetched in.
Once partitions were revoked or assigned, or the member lost its place in the
group, batches fetched before are dropped: a new assignment starts reading at
the committed offsets again, so their records are read again by whoever owns
them now, and committing them late could move an offset backwards past what
another member committed meanwhile.

With ``watermarks`` on, the consumer also says how far each of its partitions
is applied (``PartitionMark``): handed to the handler with a batch, they are
written in that batch's transaction, so they are true once it commits; when
the partitions are idle and nothing is in flight, alone. The timer scheduler
fires a deadline only once every partition is applied past it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import aiokafka
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError

from consumers import codec, kafka
from telemetry import logs, metrics

log = logs.get(__name__)


Item = codec.Inbound | codec.DeadLetter
# How often, at most, marks are handed over: each time costs one statement.
# Idle partitions are marked alone, off the hot path; a batch carries marks
# only when no idle moment came for longer (the partitions stay busy), so a
# lone event's transaction seldom pays for them.
WATERMARK_INTERVAL_S = 0.25
BATCH_WATERMARK_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class PartitionMark:
    """
    Say how far one input partition is applied once the batch it travels with commits.
    """

    topic: str
    partition: int
    # Every record of the partition before this offset is applied.
    applied_offset: int
    # The Kafka timestamp of the latest record applied, when one was in this assignment.
    record_time: datetime | None
    # When a fetch showed no record beyond applied_offset (lag 0), if the last one did.
    caught_up_at: datetime | None


class Handle(Protocol):
    """
    Apply a batch in one transaction, with the partition marks given, if any.

    Called with no items when only marks are to be written (idle partitions).
    """

    def __call__(  # noqa: D102 - the class says it
        self, items: Sequence[Item], marks: Sequence[PartitionMark] = (), /
    ) -> Awaitable[Any]: ...


# Which assignment a batch was fetched under: a count of assignment changes
# and the group generation. None: this member's place in the group is in doubt.
Epoch = tuple[int, int] | None


class _Assignment(ConsumerRebalanceListener):  # type: ignore[misc]
    """
    Count assignment changes; let the batch in flight commit before partitions go.
    """

    def __init__(self, lock: asyncio.Lock) -> None:
        self._lock = lock
        self.changes = 0
        # Set when a commit says the group moved on without us; the next
        # assignment clears it.
        self.lost = False
        self.held = 0  # partitions held now, for readiness

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # Wait for the batch in flight: it commits its offsets before we let go.
        # Counted only then, or that batch's own commit would be dropped.
        async with self._lock:
            self.changes += 1
            log.info("partitions_revoked", partitions=len(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.changes += 1
        self.lost = False
        self.held = len(assigned)
        metrics.PARTITIONS_ASSIGNED.set(len(assigned))
        metrics.CONSUMER_LAG.clear()  # partitions gone must not report a stale lag
        log.info("partitions_assigned", partitions=len(assigned))


@dataclass(slots=True)
class _Batch:
    records: dict[Any, list[Any]]
    items: list[codec.Inbound | codec.DeadLetter]
    epoch: Epoch
    marks: dict[Any, PartitionMark] = field(default_factory=dict)


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
        watermarks: bool = False,
    ) -> None:
        self._config = config
        self._batch_max_records = batch_max_records
        self._handle = handle
        self._is_retryable = is_retryable
        self._lock = asyncio.Lock()
        self._assignment = _Assignment(self._lock)
        self._roles = {config.topic(role): role for role in kafka.INPUT_ROLES}
        self._committed: dict[Any, int] = {}
        self._committed_epoch: Epoch = None
        self.fetched = 0
        self.dropped = 0
        self._watermarks = watermarks
        # Per partition, in the assignment of _marks_epoch: the latest record
        # timestamp fetched (ms), and the marks known written.
        self._marks_epoch: Epoch = None
        self._record_ms: dict[Any, int] = {}
        self._written: dict[Any, PartitionMark] = {}
        self._marks_at = float("-inf")
        self._lag_at = float("-inf")

    async def run(self, stop: asyncio.Event) -> None:
        """
        Consume until ``stop`` is set; the batch in flight is finished and committed.

        Two stages overlap: while one batch's transaction waits on PostgreSQL,
        the next batch is fetched and decoded. Batches still commit one at a
        time, in order. A batch that fails for good ends the run with its
        error at once, even when no record follows it.
        """
        consumer = kafka.consumer(self._config, [], client_id="workspaced-consumer")
        with kafka.translated():
            await consumer.start()
        consumer.subscribe(list(self._roles), listener=self._assignment)
        in_flight: asyncio.Task[None] | None = None
        try:
            while not stop.is_set():
                if in_flight is not None and in_flight.done():
                    # Raises what failed the batch: without this a quiet
                    # partition would hold it, uncommitted and unreported.
                    in_flight.result()
                    in_flight = None
                with kafka.translated():
                    # The timeout bounds how late a failed batch is seen. Never
                    # cancel getmany instead: records it drained would be lost.
                    records = await consumer.getmany(
                        timeout_ms=200, max_records=self._batch_max_records
                    )
                epoch = self._epoch(consumer)
                self._note_times(records, epoch)
                self._report_lag(consumer)
                if not records:
                    # Only with nothing in flight: every record fetched is applied.
                    if in_flight is None and (
                        marks := self._marks(consumer, epoch, WATERMARK_INTERVAL_S)
                    ):
                        idle = _Batch({}, [], epoch, marks)
                        in_flight = asyncio.create_task(self._apply(consumer, idle, stop))
                    continue
                self.fetched += sum(len(r) for r in records.values())
                marks = self._marks(consumer, epoch, BATCH_WATERMARK_INTERVAL_S)
                batch = _Batch(records, self._decode(records), epoch, marks)
                if in_flight is not None:
                    await in_flight
                in_flight = asyncio.create_task(
                    self._apply(consumer, batch, stop), name="consumer-batch"
                )
            if in_flight is not None:
                await in_flight
        finally:
            if in_flight is not None and not in_flight.done():
                in_flight.cancel()
            if in_flight is not None:
                # Awaited, so it has rolled back before the consumer leaves
                # the group; its error, if any, is the one already raised.
                await asyncio.gather(in_flight, return_exceptions=True)
            with kafka.translated():
                await consumer.stop()

    @property
    def partitions_held(self) -> int:
        """
        Return how many input partitions this instance holds now.
        """
        return self._assignment.held

    def _report_lag(self, consumer: aiokafka.AIOKafkaConsumer) -> None:
        # At most once a second: a gauge per partition, from the last fetch.
        now = time.monotonic()
        if now < self._lag_at + 1.0:
            return
        self._lag_at = now
        for tp in consumer.assignment():
            state = consumer._subscription.subscription.assignment.state_value(tp)  # noqa: SLF001
            highwater = consumer.highwater(tp)
            if state is None or not state.has_valid_position or highwater is None:
                continue
            lag = max(0, highwater - int(state.position))
            metrics.CONSUMER_LAG.labels(self._roles[tp.topic], str(tp.partition)).set(lag)

    def _epoch(self, consumer: aiokafka.AIOKafkaConsumer) -> Epoch:
        # aiokafka commits with whatever generation is current, not the one
        # the records were fetched in, and has no public accessor for it.
        generation = int(consumer._coordinator.generation)  # noqa: SLF001
        if self._assignment.lost or generation < 0:
            return None
        return (self._assignment.changes, generation)

    def _note_times(self, records: dict[Any, list[Any]], epoch: Epoch) -> None:
        if not self._watermarks:
            return
        if epoch != self._marks_epoch:
            # Records fetched under another assignment may have been dropped.
            self._marks_epoch, self._record_ms, self._written = epoch, {}, {}
        for tp, batch in records.items():
            newest = max(r.timestamp for r in batch)
            if newest >= 0:  # -1: a record without a timestamp
                self._record_ms[tp] = max(newest, self._record_ms.get(tp, newest))

    def _marks(
        self, consumer: aiokafka.AIOKafkaConsumer, epoch: Epoch, interval_s: float
    ) -> dict[Any, PartitionMark]:
        """
        Return the marks that changed since written, if none were handed over for ``interval_s``.

        Read in the same step as the fetch that returned the batch, with no
        await in between: every record before a partition's position is then
        in this batch or in one before it, applied in order before it commits.
        """
        if not self._watermarks or epoch is None or time.monotonic() < self._marks_at + interval_s:
            return {}
        changed = {}
        for tp in consumer.assignment():
            mark = self._mark(consumer, tp)
            if mark is not None and mark != self._written.get(tp):
                changed[tp] = mark
        if changed:
            self._marks_at = time.monotonic()
        return changed

    def _mark(self, consumer: aiokafka.AIOKafkaConsumer, tp: Any) -> PartitionMark | None:
        # aiokafka's position() is a coroutine that may wait for a reset; the
        # fetch position itself is this state's, read without awaiting.
        state = consumer._subscription.subscription.assignment.state_value(tp)  # noqa: SLF001
        if state is None or not state.has_valid_position:
            return None
        position = int(state.position)
        highwater, polled_ms = consumer.highwater(tp), consumer.last_poll_timestamp(tp)
        caught_up = highwater is not None and polled_ms is not None and position >= highwater
        record_ms = self._record_ms.get(tp)
        return PartitionMark(
            tp.topic,
            tp.partition,
            position,
            None if record_ms is None else datetime.fromtimestamp(record_ms / 1000, UTC),
            datetime.fromtimestamp(polled_ms / 1000, UTC) if caught_up else None,
        )

    def _decode(self, batch: dict[Any, list[Any]]) -> list[codec.Inbound | codec.DeadLetter]:
        limit = self._config.max_record_bytes
        items = self._decode_all(batch, limit)
        for item in items:
            kind = type(item.event).__name__ if isinstance(item, codec.Inbound) else "invalid"
            metrics.EVENTS_CONSUMED.labels(item.record.role, kind).inc()
        return items

    def _decode_all(
        self, batch: dict[Any, list[Any]], limit: int
    ) -> list[codec.Inbound | codec.DeadLetter]:
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

    def _current(self, consumer: aiokafka.AIOKafkaConsumer, batch: _Batch, stage: str) -> bool:
        if batch.epoch is not None and batch.epoch == self._epoch(consumer):
            return True
        # Whoever owns these partitions now reads them from the committed offset.
        self.dropped += len(batch.items)
        if not batch.records:
            return False  # marks of idle partitions: nothing to say
        log.info(
            "batch_dropped", reason="assignment changed", stage=stage, records=len(batch.items)
        )
        return False

    async def _apply(
        self, consumer: aiokafka.AIOKafkaConsumer, batch: _Batch, stop: asyncio.Event
    ) -> None:
        async with self._lock:
            if not self._current(consumer, batch, "before applying"):
                return
            if not await self._handle_until_done(batch.items, list(batch.marks.values()), stop):
                return
            if batch.epoch == self._marks_epoch:
                self._written.update(batch.marks)
            if not batch.records:
                return
            # A member that stalled through its session may have been replaced
            # while this batch was applied; the next owner re-reads it and the
            # inbox turns what we applied into no-ops.
            if self._current(consumer, batch, "before committing"):
                await self._commit(consumer, batch)

    async def _handle_until_done(
        self,
        items: list[codec.Inbound | codec.DeadLetter],
        marks: list[PartitionMark],
        stop: asyncio.Event,
    ) -> bool:
        delay_s = 0.2
        while True:
            try:
                await (self._handle(items, marks) if marks else self._handle(items))
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

    async def _commit(self, consumer: aiokafka.AIOKafkaConsumer, batch: _Batch) -> None:
        if batch.epoch != self._committed_epoch:
            self._committed, self._committed_epoch = {}, batch.epoch
        offsets = {
            tp: records[-1].offset + 1
            for tp, records in batch.records.items()
            # Never behind what this assignment already committed.
            if records[-1].offset + 1 > self._committed.get(tp, -1)
        }
        if not offsets:
            return
        try:
            with kafka.translated():
                await consumer.commit(offsets)
        except kafka.BrokerError as exc:
            # Our partitions moved on: the next owner re-reads them and the
            # inbox turns what we already applied into no-ops.
            if isinstance(exc.__cause__, CommitFailedError):
                # Until the rejoin that follows, batches fetched meanwhile
                # would commit on the old positions: drop them instead.
                self._assignment.lost = True
            metrics.KAFKA_ERRORS.labels("commit").inc()
            log.warning("commit_failed", error=str(exc))
        else:
            self._committed.update(offsets)
