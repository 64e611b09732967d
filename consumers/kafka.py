"""
Build aiokafka clients from settings, create topics, and translate Kafka errors.

The same settings work on Tansu and on Apache Kafka: the idempotent producer
is off (Tansu has no InitProducerId), ``acks=all`` keeps writes durable, and
duplicates that a retry may cause are harmless because every consumer of our
topics deduplicates on the CloudEvent id.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from typing import Any

import aiokafka
from aiokafka import errors as kafka_errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from workspaced.settings import TOPIC_NAMES, Settings

INPUT_ROLES = (
    "tool_calls",
    "workspace_command_results",
    "provisioner_job_updates",
    "agent_heartbeats",
)


class BrokerError(Exception):
    """
    Raise when Kafka fails; callers never see an aiokafka type.
    """


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """
    Re-raise aiokafka errors as ``BrokerError``.
    """
    try:
        yield
    except kafka_errors.KafkaError as exc:
        raise BrokerError(f"{type(exc).__name__}: {exc}") from exc


def common(settings: Settings, client_id: str) -> dict[str, Any]:
    """
    Return the connection settings every client shares.
    """
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "client_id": client_id,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in {"SSL", "SASL_SSL"}:
        cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        options["ssl_context"] = ssl.create_default_context(cafile=cafile)
    if settings.kafka_sasl_mechanism:
        password = settings.kafka_sasl_password
        options |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": password.get_secret_value() if password else None,
        }
    return options


def producer(
    settings: Settings, client_id: str = "workspaced", linger_ms: int = 2
) -> aiokafka.AIOKafkaProducer:
    """
    Return a producer that works on Tansu and Apache Kafka alike.
    """
    return aiokafka.AIOKafkaProducer(
        **common(settings, client_id),
        acks="all",
        enable_idempotence=False,
        linger_ms=linger_ms,
        max_batch_size=256 * 1024,
        # Dead letters carry up to max_record_bytes of the original value.
        max_request_size=max(settings.max_record_bytes + 65_536, 1_048_576),
        request_timeout_ms=30_000,
    )


def consumer(
    settings: Settings, topics: list[str], client_id: str = "workspaced", **extra: Any
) -> aiokafka.AIOKafkaConsumer:
    """
    Return a group consumer that starts from the earliest offset and commits by hand.
    """
    options = {
        "group_id": settings.consumer_group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_partition_fetch_bytes": max(settings.max_record_bytes * 2, 1_048_576),
        "fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms,
        "session_timeout_ms": settings.kafka_session_timeout_ms,
        "heartbeat_interval_ms": settings.kafka_heartbeat_interval_ms,
        "rebalance_timeout_ms": settings.kafka_session_timeout_ms,
    } | extra
    return aiokafka.AIOKafkaConsumer(*topics, **common(settings, client_id), **options)


async def ensure_topics(settings: Settings) -> list[str]:
    """
    Create the topics of spec section 4 that do not exist yet; return those created.
    """
    admin = AIOKafkaAdminClient(**common(settings, "workspaced-admin"))
    with translated():
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            wanted = [settings.topic(name) for name in TOPIC_NAMES]
            missing = [t for t in wanted if t not in existing]
            if missing:
                await admin.create_topics(
                    [
                        NewTopic(t, settings.topic_partitions, settings.topic_replication_factor)
                        for t in missing
                    ]
                )
            return missing
        finally:
            await admin.close()
