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
        await self.send_many(role, [(key, ce_type, ce_id, data)])

    async def send_many(
        self, role: str, events: Sequence[tuple[str, str, str, dict[str, Any]]]
    ) -> None:
        """
        Publish events in order and wait until the broker has all of them.
        """
        if not events:
            return
        topic = self._config.topic(role)
        now = datetime.now(UTC)
        with kafka.translated():
            sent = [
                await self._producer.send(
                    topic,
                    orjson.dumps(data),
                    key=key.encode(),
                    headers=codec.encode_headers(self._source, ce_id, ce_type, now),
                )
                for key, ce_type, ce_id, data in events
            ]
            await asyncio.gather(*sent)
