"""
Publish the bridge's events as binary-mode CloudEvents.

The bridge publishes straight to Kafka, not through an outbox: every event it
sends is a fact about Coder that it can read again, and the daemon
deduplicates on the CloudEvent id, so a lost or repeated send is harmless.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import aiokafka
import orjson

from consumers import codec, kafka


class EventPublisher:
    """
    Send events to the topics of one ``KafkaConfig``, waiting for the broker's ack.
    """

    def __init__(
        self, producer: aiokafka.AIOKafkaProducer, config: kafka.KafkaConfig, source: str
    ) -> None:
        self._producer = producer
        self._config = config
        self._source = source

    async def send(
        self, role: str, key: str, ce_type: str, ce_id: str, data: dict[str, Any]
    ) -> None:
        """
        Publish one event and wait until the broker has it.
        """
        await self.send_all([(role, key, ce_type, ce_id, data)])

    async def send_many(
        self, role: str, events: Sequence[tuple[str, str, str, dict[str, Any]]]
    ) -> None:
        """
        Publish events to one topic in order and wait until the broker has all of them.
        """
        await self.send_all([(role, *event) for event in events])

    async def send_all(self, events: Sequence[tuple[str, str, str, str, dict[str, Any]]]) -> None:
        """
        Publish events (role, key, type, id, data) in order; wait until the broker has them all.

        All are handed to the producer before the first acknowledgement is
        awaited, so events of one snapshot (a job update and a heartbeat) cost
        one round trip, not one each.
        """
        if not events:
            return
        now = datetime.now(UTC)
        with kafka.translated():
            sent = [
                await self._producer.send(
                    self._config.topic(role),
                    orjson.dumps(data),
                    key=key.encode(),
                    headers=codec.encode_headers(self._source, ce_id, ce_type, now),
                )
                for role, key, ce_type, ce_id, data in events
            ]
            await asyncio.gather(*sent)
