"""
Publish the outbox to Kafka, in order, and forget rows only once the broker acked them.

One relay is active at a time across all instances (the outbox source hands
out leadership), so records of one key are never published out of order.

The relay never blocks on one record. A record the broker refuses for good
(too large, not authorised, an unknown topic, a record it finds invalid) is
parked: kept in PostgreSQL with the broker's error, counted and logged, and
the records behind it go on. Any other failure is retried with capped,
jittered backoff. Order per key holds through failures: a partition's batches
are sent one after the other and the partition stops at its first failure, so
a later record of a key never overtakes an earlier one that failed; only rows
whose own batch was acknowledged are deleted.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import aiokafka
from aiokafka import errors as kafka_errors
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from consumers import codec, kafka
from telemetry import logs, metrics

log = logs.get(__name__)

Header = tuple[str, bytes | None]

# What the broker (or the client, for it) refuses whatever the retry: the
# record, or its topic, is the problem. aiokafka maps INVALID_RECORD (87) to
# UnknownError, which is retried like any other failure.
_REFUSED_FOR_GOOD = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.CorruptRecordException,
    kafka_errors.InvalidTimestampError,
    kafka_errors.UnsupportedForMessageFormatError,
    kafka_errors.InvalidTopicError,
    kafka_errors.TopicAuthorizationFailedError,
)
_BACKOFF_FIRST_S = 0.2
_BACKOFF_MAX_S = 10.0


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
    def headers(self) -> Sequence[Header] | None: ...


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

    async def park(self, ids: Sequence[int], error: str) -> None:
        """
        Move rows the broker refused for good out of the relay's way, keeping ``error``.
        """


@dataclass(slots=True)
class _Batch:
    """
    One Kafka batch for one partition, and the outbox rows in it, in order.
    """

    builder: BatchBuilder
    ids: list[int]
    alone: bool = False


@dataclass(slots=True)
class _Round:
    """
    What became of one round's rows: acknowledged, refused for good, or to retry.
    """

    acked: list[int] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)
    failure: str | None = None

    def fail(self, error: str) -> None:
        self.failure = self.failure or error


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
        # aiokafka checks this limit in send() only, which the relay bypasses.
        self._max_request_bytes = int(producer._max_request_size)  # noqa: SLF001
        # Rows of a batch the broker refused whole: each is sent in a batch of
        # its own, to find which one it refuses.
        self._alone: set[int] = set()
        self.wake = asyncio.Event()
        self.published = 0
        self.leading = False
        self.parked = 0

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
                    self.leading = True
                    metrics.RELAY_LEADER.set(1)
                    try:
                        await self._lead(lease, stop)
                    finally:
                        self.leading = False
                        metrics.RELAY_LEADER.set(0)
            except Exception as exc:  # noqa: BLE001 - storage trouble: lead again after a pause
                log.warning("relay_interrupted", error=str(exc))
                await _sleep_or_stop(stop, 1.0)

    async def _lead(self, lease: Callable[[], bool], stop: asyncio.Event) -> None:
        backoff_s = _BACKOFF_FIRST_S
        while not stop.is_set() and lease():
            self.wake.clear()  # before the fetch: a NOTIFY during it must not be lost
            try:
                sent = await self.publish_once()
            except kafka.BrokerError as exc:
                # Jittered, so instances that lost the broker together do not
                # come back in step.
                delay_s = random.uniform(backoff_s / 2, backoff_s)
                metrics.KAFKA_ERRORS.labels("publish").inc()
                log.warning("relay_publish_failed", error=str(exc), retry_in_s=round(delay_s, 3))
                await _sleep_or_stop(stop, delay_s)
                backoff_s = min(backoff_s * 2, _BACKOFF_MAX_S)
                continue
            backoff_s = _BACKOFF_FIRST_S
            if sent or self._alone:
                continue
            await _first_of(stop.wait(), self.wake.wait(), timeout_s=self._sweep_s)

    async def publish_once(self, limit: int = 1000) -> int:
        """
        Publish one batch of the oldest rows; return how many left the outbox.

        Acknowledged rows are deleted and refused ones parked; then, if others
        failed and wait for a retry, raise ``BrokerError``.
        """
        rows = await self._source.fetch(limit)
        if not rows:
            return 0
        self._alone.intersection_update(row.id for row in rows)
        done = _Round()
        began = time.perf_counter()
        plan = await self._plan(rows, done)
        await asyncio.gather(*(self._send(where, batches, done) for where, batches in plan.items()))
        metrics.RELAY_PUBLISH_DURATION.observe(time.perf_counter() - began)
        if done.acked:
            await self._source.delete(done.acked)
            self.published += len(done.acked)
            metrics.RELAY_PUBLISHED.inc(len(done.acked))
        if done.refused:
            await self._park(rows, done.refused)
        self._alone.difference_update(done.acked, done.refused)
        if done.failure is not None:
            raise kafka.BrokerError(done.failure)
        return len(done.acked) + len(done.refused)

    async def _park(self, rows: Sequence[Claimed], refused: dict[int, str]) -> None:
        by_error: dict[str, list[int]] = {}
        for row in rows:
            error = refused.get(row.id)
            if error is None:
                continue
            by_error.setdefault(error, []).append(row.id)
            log.error(
                "relay_record_parked",
                topic=row.record.topic,
                event_id=row.record.ce_id,
                ce_type=row.record.ce_type,
                error=error,
            )
        for error, ids in by_error.items():
            await self._source.park(ids, error)
            self.parked += len(ids)
            metrics.PARKED.inc(len(ids))

    async def _plan(
        self, rows: Sequence[Claimed], done: _Round
    ) -> dict[tuple[str, int], list[_Batch]]:
        """
        Fill Kafka batches per partition, in outbox order; refuse what cannot be sent.

        aiokafka's per-record ``send`` was the relay's main cost; building the
        batches here, with the producer's own partitioner, keeps each key on
        the partition ``send`` would have chosen and in the same order.
        """
        plan: dict[tuple[str, int], list[_Batch]] = {}
        partitions: dict[str, list[int] | str] = {}
        chosen: dict[tuple[str, bytes | None], tuple[str, int]] = {}
        for row in rows:
            record = row.record
            if record.topic not in partitions:
                partitions[record.topic] = await self._partitions(record.topic)
            choices = partitions[record.topic]
            if isinstance(choices, str):
                done.refused[row.id] = choices
                continue
            where = chosen.get((record.topic, record.key))
            if where is None:  # murmur2 in Python: once per key and batch
                where = (record.topic, self._partitioner(record.key, choices, choices))
                if record.key is not None:  # no key: a random partition each time
                    chosen[(record.topic, record.key)] = where
            try:
                self._add(plan.setdefault(where, []), row.id, record)
            except _RecordRefusedError as exc:
                done.refused[row.id] = str(exc)
        return plan

    def _add(self, batches: list[_Batch], row_id: int, record: Outgoing) -> None:
        headers = self._headers(record)
        try:
            size = DefaultRecordBatchBuilder.estimate_size_in_bytes(
                record.key, record.payload, headers
            )
            if size > self._max_request_bytes:
                msg = (
                    f"MessageSizeTooLargeError: the record is {size} bytes, over the"
                    f" producer's max_request_size of {self._max_request_bytes}"
                )
                raise _RecordRefusedError(msg)
            alone = row_id in self._alone
            if batches and not alone and not batches[-1].alone:
                last = batches[-1]
                appended = last.builder.append(
                    key=record.key, value=record.payload, timestamp=None, headers=headers
                )
                if appended is not None:
                    last.ids.append(row_id)
                    return
            builder = self._producer.create_batch()
            # The first record of a batch always fits, whatever its size.
            builder.append(key=record.key, value=record.payload, timestamp=None, headers=headers)
        except (UnicodeError, TypeError, ValueError) as exc:  # a header Kafka cannot carry
            msg = f"the record cannot be encoded: {type(exc).__name__}: {exc}"
            raise _RecordRefusedError(msg) from exc
        batches.append(_Batch(builder, [row_id], alone))

    async def _partitions(self, topic: str) -> list[int] | str:
        """
        Return the topic's partitions, or the error that refuses its records for good.
        """
        try:
            return sorted(await self._producer.partitions_for(topic))
        except _REFUSED_FOR_GOOD as exc:
            return _describe(exc)
        except kafka_errors.UnknownTopicOrPartitionError as exc:
            # aiokafka says so after waiting request_timeout_ms for metadata,
            # whether the topic is missing or no broker answered: ask once more.
            with kafka.translated():
                cluster = await self._producer.client.fetch_all_metadata()
            if topic in cluster.topics():
                raise kafka.BrokerError(_describe(exc)) from exc  # there now: try again
            return _describe(exc)
        except kafka_errors.KafkaError as exc:
            raise kafka.BrokerError(_describe(exc)) from exc

    async def _send(self, where: tuple[str, int], batches: list[_Batch], done: _Round) -> None:
        """
        Send one partition's batches one after the other; stop at the first failure.
        """
        topic, partition = where
        for batch in batches:
            try:
                acked = await self._producer.send_batch(batch.builder, topic, partition=partition)
                await acked
            except _REFUSED_FOR_GOOD as exc:
                if len(batch.ids) == 1:
                    done.refused[batch.ids[0]] = _describe(exc)
                    continue
                # Which record? Send each alone next round, from this batch on.
                self._alone.update(batch.ids)
                log.warning(
                    "relay_batch_refused",
                    topic=topic,
                    partition=partition,
                    records=len(batch.ids),
                    error=_describe(exc),
                )
                return
            except Exception as exc:  # noqa: BLE001 - anything else: retry after a pause
                done.fail(_describe(exc))
                return  # the rest waits: a later record of a key never overtakes this one
            done.acked.extend(batch.ids)

    def _headers(self, record: Outgoing) -> Sequence[Header]:
        if record.headers is not None:  # a dead letter keeps its own headers
            return list(record.headers)
        return codec.encode_headers(self._ce_source, record.ce_id, record.ce_type, record.ce_time)


class _RecordRefusedError(Exception):
    """
    Raise when a record cannot be sent at all, whatever the broker.
    """


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    await _first_of(stop.wait(), timeout_s=seconds)


async def _first_of(*waits: object, timeout_s: float) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]  # type: ignore[call-overload]
    try:
        await asyncio.wait(tasks, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        # Awaited, so none is left pending when the relay's own task ends.
        await asyncio.gather(*tasks, return_exceptions=True)
