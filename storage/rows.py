"""
Convert between the core's values and PostgreSQL rows, and describe outbox records.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from statemachine import effects, ids
from statemachine.model import Agent, ChatWorkspace, Job
from statemachine.states import State

# A Kafka header: its name, and its value, which Kafka allows to be null.
Header = tuple[str, bytes | None]


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """
    Hold one record to publish: its topic, key, CloudEvent attributes and value.
    """

    topic: str
    key: bytes | None
    ce_id: str
    ce_type: str
    ce_time: datetime
    payload: bytes | None
    # None: CloudEvents headers are made at publish time; a dead letter keeps its own.
    headers: tuple[Header, ...] | None = None


@dataclass(frozen=True, slots=True)
class ClaimedRecord:
    """
    Hold an outbox row claimed for publishing.
    """

    id: int
    record: OutboxRecord


def job(record: asyncpg.Record) -> Job:
    """
    Return the job of a ``provisioner_jobs`` row.
    """
    agents = tuple(Agent(a["id"], a.get("name", "")) for a in record["agents"])
    return Job(
        record["job_id"],
        record["workspace_id"],
        record["build_id"],
        record["transition"],
        record["status"],
        record["error"],
        agents,
        record["occurred_at"],
    )


def row(record: asyncpg.Record) -> ChatWorkspace:
    """
    Return the chat of a ``chat_workspaces`` row (its waiting calls left out).
    """
    values = dict(record)
    values["state"] = State(values["state"])
    values["parameters"] = tuple((name, value) for name, value in values["parameters"])
    return ChatWorkspace(**values)


def columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """
    Turn rows into one list per column, for ``unnest``.
    """
    return [[row[i] for row in rows] for i in range(width)]


def outbox_columns(records: Sequence[OutboxRecord]) -> list[list[Any]]:
    """
    Return the outbox records as one list per column, for ``unnest``.
    """
    return [
        [r.topic for r in records],
        [r.key for r in records],
        [r.ce_id for r in records],
        [r.ce_type for r in records],
        [r.ce_time for r in records],
        [r.payload for r in records],
        [encode_headers(r.headers) for r in records],
    ]


def encode_headers(headers: Sequence[Header] | None) -> str | None:
    """
    Return a dead letter's headers as JSON text for ``jsonb``: ``[[name, value], ...]``.

    Total and lossless, so any record can be dead-lettered: a value is base64
    or null; a name is JSON text, or ``{"b64": ...}`` when ``jsonb`` could not
    hold it as text (NUL) or it is not valid Unicode (a lone surrogate). Rows
    of the earlier ``[[name, base64], ...]`` form read the same.
    """
    if headers is None:
        return None
    return orjson.dumps(
        [
            [_encode_name(name), None if value is None else base64.b64encode(value).decode()]
            for name, value in headers
        ]
    ).decode()


def decode_headers(stored: list[list[Any]] | None) -> tuple[Header, ...] | None:
    """
    Return the headers of an outbox row as Kafka takes them.
    """
    if stored is None:
        return None
    return tuple(
        (_decode_name(name), None if value is None else base64.b64decode(value))
        for name, value in stored
    )


def _encode_name(name: str) -> str | dict[str, str]:
    if "\x00" not in name:
        try:
            name.encode()
        except UnicodeEncodeError:
            pass
        else:
            return name
    return {"b64": base64.b64encode(name.encode("utf-8", "surrogatepass")).decode()}


def _decode_name(stored: str | dict[str, str]) -> str:
    if isinstance(stored, str):
        return stored
    return base64.b64decode(stored["b64"]).decode("utf-8", "surrogatepass")


def row_args(row: ChatWorkspace) -> tuple[Any, ...]:
    """
    Return the columns of a ``chat_workspaces`` row, in ``batch_save`` order.
    """
    return (
        row.chat_id,
        row.owner_id,
        row.state.value,
        row.version,
        row.state_entered_at,
        row.updated_at,
        row.workspace_id,
        row.workspace_name,
        row.owner_name,
        row.build_id,
        row.job_id,
        row.agent_id,
        row.agent_status,
        row.template_id,
        row.command_id,
        row.requested_name,
        row.last_error,
        row.deadline_at,
        orjson.dumps(row.parameters).decode(),
    )


def history_args(effect: effects.RecordTransition) -> tuple[Any, ...]:
    """
    Return the columns of a ``workspace_transitions`` row.
    """
    return (
        effect.chat_id,
        effect.from_state.value,
        effect.to_state.value,
        effect.trigger.value,
        effect.event_id,
        effect.version,
        effect.occurred_at,
        orjson.dumps(effect.detail).decode(),
    )


def publish_record(effect: effects.Publish, topic_name: Callable[[str], str]) -> OutboxRecord:
    """
    Return the outbox record of a ``Publish`` effect.
    """
    return OutboxRecord(
        topic_name(effect.topic.value),
        effect.key.encode(),
        effect.ce_id,
        effect.ce_type,
        effect.occurred_at,
        orjson.dumps(effect.data),
    )


def answer_record(effect: effects.Answer, topic_name: Callable[[str], str]) -> OutboxRecord:
    """
    Return the outbox record of a tool result; its id depends only on the call (R14).
    """
    data = {
        "tool_call_id": effect.tool_call_id,
        "chat_id": effect.chat_id,
        "tool": effect.tool.value,
        "is_error": effect.is_error,
        "content": effect.content,
    }
    return OutboxRecord(
        topic_name(effects.Topic.TOOL_RESULTS.value),
        effect.chat_id.encode(),
        ids.tool_result(effect.tool_call_id),
        "chat.tool_result.v1",
        effect.occurred_at,
        orjson.dumps(data),
    )
