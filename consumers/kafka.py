"""
Build aiokafka clients from a ``KafkaConfig``, create topics, and translate Kafka errors.

The same settings work on Tansu and on Apache Kafka: the idempotent producer
is off (Tansu has no InitProducerId), ``acks=all`` keeps writes durable, and
duplicates that a retry may cause are harmless because every consumer of our
topics deduplicates on the CloudEvent id.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiokafka
from aiokafka import errors as kafka_errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

# Every topic of the contract by role, with its default name (before the prefix).
TOPICS = {
    "tool_calls": "chat.tool_calls",
    "tool_results": "chat.tool_results",
    "workspace_events": "chat.workspace_events",
    "workspace_commands": "coder.workspace_commands",
    "workspace_command_results": "coder.workspace_command_results",
    "provisioner_job_updates": "coder.provisioner_job_updates",
    "agent_heartbeats": "coder.agent_heartbeats",
    "dead_letters": "workspaced.dead_letters",
}
INPUT_ROLES = (
    "tool_calls",
    "workspace_command_results",
    "provisioner_job_updates",
    "agent_heartbeats",
)


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    """
    Hold what the Kafka clients need: where the brokers are, how to reach them, the topics.

    The application builds it from its settings; this layer never sees them.
    """

    bootstrap_servers: str
    group_id: str = "workspaced"
    topic_prefix: str = ""
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000
    fetch_max_wait_ms: int = 100
    max_record_bytes: int = 1_048_576
    topic_partitions: int = 8
    topic_replication_factor: int = 1

    def topic(self, role: str) -> str:
        """
        Return the full name of the topic of ``role``, prefix included.
        """
        return self.topic_prefix + TOPICS[role]


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
        text = str(exc)
        name = type(exc).__name__
        raise BrokerError(text if text.startswith(name) else f"{name}: {text}") from exc


def common(config: KafkaConfig, client_id: str) -> dict[str, Any]:
    """
    Return the connection settings every client shares.
    """
    options: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap_servers,
        "client_id": client_id,
        "security_protocol": config.security_protocol,
    }
    if config.security_protocol in {"SSL", "SASL_SSL"}:
        try:
            options["ssl_context"] = ssl.create_default_context(cafile=config.ssl_cafile)
        except OSError as exc:  # missing, unreadable, or no certificate in it (ssl.SSLError)
            msg = (
                f"cannot load the CA file {config.ssl_cafile} for Kafka TLS: {exc.strerror or exc}"
            )
            raise BrokerError(msg) from exc
    if config.sasl_mechanism:
        options |= {
            "sasl_mechanism": config.sasl_mechanism,
            "sasl_plain_username": config.sasl_username,
            "sasl_plain_password": config.sasl_password,
        }
    return options


def producer(
    config: KafkaConfig, client_id: str = "workspaced", linger_ms: int = 2
) -> aiokafka.AIOKafkaProducer:
    """
    Return a producer that works on Tansu and Apache Kafka alike.
    """
    return aiokafka.AIOKafkaProducer(
        **common(config, client_id),
        acks="all",
        enable_idempotence=False,
        linger_ms=linger_ms,
        max_batch_size=256 * 1024,
        # Dead letters carry up to max_record_bytes of the original value.
        max_request_size=max(config.max_record_bytes + 65_536, 1_048_576),
        request_timeout_ms=30_000,
    )


def consumer(
    config: KafkaConfig, topics: list[str], client_id: str = "workspaced", **extra: Any
) -> aiokafka.AIOKafkaConsumer:
    """
    Return a group consumer that starts from the earliest offset and commits by hand.
    """
    options = {
        "group_id": config.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_partition_fetch_bytes": max(config.max_record_bytes * 2, 1_048_576),
        "fetch_max_wait_ms": config.fetch_max_wait_ms,
        "session_timeout_ms": config.session_timeout_ms,
        "heartbeat_interval_ms": config.heartbeat_interval_ms,
        "rebalance_timeout_ms": config.session_timeout_ms,
    } | extra
    return aiokafka.AIOKafkaConsumer(*topics, **common(config, client_id), **options)


async def ensure_topics(config: KafkaConfig) -> list[str]:
    """
    Create the contract's topics that do not exist yet; return those created.
    """
    admin = AIOKafkaAdminClient(**common(config, "workspaced-admin"))
    with translated():
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            wanted = [config.topic(role) for role in TOPICS]
            missing = [t for t in wanted if t not in existing]
            if missing:
                await admin.create_topics(
                    [
                        NewTopic(t, config.topic_partitions, config.topic_replication_factor)
                        for t in missing
                    ]
                )
            return missing
        finally:
            await admin.close()
