"""
Decode CloudEvents records into domain events, and encode outputs as CloudEvents.

Binary mode (``ce_*`` headers, JSON value) is the norm; structured mode
(``content-type: application/cloudevents+json``) is accepted on input. A
record that cannot be decoded becomes a ``DeadLetter`` with the reason (R15).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from consumers import schemas
from statemachine import events, toolcalls
from statemachine.model import Agent, Job

STRUCTURED = "application/cloudevents+json"
JSON = "application/json"

# Which event types each input topic (by role) carries.
INPUT_TYPES: dict[str, frozenset[str]] = {
    "tool_calls": frozenset({"chat.tool_call.v1"}),
    "workspace_command_results": frozenset(
        {"coder.workspace.created.v1", "coder.workspace.create_failed.v1"}
    ),
    "provisioner_job_updates": frozenset({"coder.provisioner_job.updated.v1"}),
    "agent_heartbeats": frozenset({"coder.agent.heartbeat.v1"}),
}


@dataclass(frozen=True, slots=True)
class RawRecord:
    """
    Hold one consumed record as Kafka gave it, with the role of its topic.
    """

    role: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class JobReported:
    """
    Carry a provisioner job update, before it is merged with what is known.
    """

    event_id: str
    job: Job


@dataclass(frozen=True, slots=True)
class HeartbeatReported:
    """
    Carry one agent heartbeat.
    """

    agent_id: str
    workspace_id: str
    lifecycle_state: str | None
    occurred_at: datetime


Decoded = (
    events.ToolCall
    | events.InvalidToolCall
    | events.CreateAccepted
    | events.CreateRejected
    | JobReported
    | HeartbeatReported
)


@dataclass(frozen=True, slots=True)
class Inbound:
    """
    Pair a decoded event with its CloudEvent identity, for deduplication.
    """

    source: str
    ce_id: str
    event: Decoded
    record: RawRecord


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """
    Carry a record that could not be decoded, and why.
    """

    reason: str
    record: RawRecord


class DecodeError(Exception):
    """
    Raise inside the codec with the reason a record goes to the dead letters.
    """


def decode(record: RawRecord, max_bytes: int) -> Inbound | DeadLetter:
    """
    Decode one record, or say why it goes to the dead-letter topic.
    """
    try:
        return _decode(record, max_bytes)
    except DecodeError as exc:
        return DeadLetter(str(exc), record)
    except Exception as exc:  # noqa: BLE001 - a decoder bug must not stop the stream
        return DeadLetter(f"could not be decoded: {type(exc).__name__}: {exc}", record)


_ATTRIBUTES = ("specversion", "id", "source", "type")
_ATTRIBUTE_HEADERS = {f"ce_{name}": name for name in _ATTRIBUTES}


def _header_text(name: str, value: bytes | None) -> str:
    try:
        return value.decode() if value is not None else ""
    except UnicodeDecodeError:
        msg = f"header {name} is not UTF-8"
        raise DecodeError(msg) from None


def _read_headers(headers: Sequence[tuple[str, bytes]]) -> tuple[dict[str, Any], str | None]:
    attrs: dict[str, Any] = {}
    content_type: str | None = None
    for name, raw in headers:
        attribute = _ATTRIBUTE_HEADERS.get(name)
        if attribute is not None:
            if attribute not in attrs:
                attrs[attribute] = _header_text(name, raw)
        elif name == "content-type" and content_type is None:
            content_type = _header_text(name, raw).split(";")[0].strip().lower()
    return attrs, content_type


def _check_attributes(attrs: dict[str, Any]) -> None:
    for name in _ATTRIBUTES:
        attr = attrs.get(name)
        if not isinstance(attr, str) or not attr:
            msg = f"missing CloudEvents attribute {name}"
            raise DecodeError(msg)
        if "\x00" in attr:
            msg = f"CloudEvents attribute {name} contains a NUL character"
            raise DecodeError(msg)


def _envelope(record: RawRecord) -> tuple[str, str, str, Any]:
    """
    Return (source, id, type, data) from either CloudEvents mode.

    Only the headers CloudEvents defines are read: other headers (tracing,
    say) may hold any bytes. The first of a repeated header counts.
    """
    attrs, content_type = _read_headers(record.headers)
    value = record.value or b""
    if content_type == STRUCTURED:
        envelope = _json(value)
        if not isinstance(envelope, dict):
            raise DecodeError("structured CloudEvent is not a JSON object")
        attrs = {name: envelope.get(name) for name in _ATTRIBUTES}
        data = envelope.get("data")
    elif content_type in (JSON, None):
        data = value  # parsed by the event's model, straight from bytes (pydantic-core)
    else:
        msg = f"unsupported content-type {content_type!r}"
        raise DecodeError(msg)
    _check_attributes(attrs)
    if attrs["specversion"] != "1.0":
        msg = f"unsupported CloudEvents specversion {attrs['specversion']!r}"
        raise DecodeError(msg)
    return attrs["source"], attrs["id"], attrs["type"], data


def _json(value: bytes) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        msg = f"value is not JSON: {exc}"
        raise DecodeError(msg) from None


def describe(exc: ValidationError) -> str:
    """
    Say what is wrong with each field, without echoing values.
    """
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "data"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def _validate(model: type[BaseModel], data: Any) -> Any:
    try:
        if isinstance(data, bytes):
            return model.model_validate_json(data)
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            msg = f"value is not JSON: {first['msg']}"
        elif first["type"] == "model_type" and not first["loc"]:
            msg = "data is not a JSON object"
        else:
            msg = f"invalid data: {describe(exc)}"
        raise DecodeError(msg) from None


def _decode(record: RawRecord, max_bytes: int) -> Inbound:
    size = len(record.value or b"")
    if size > max_bytes:
        msg = f"value of {size} bytes is over the limit of {max_bytes}"
        raise DecodeError(msg)
    source, ce_id, ce_type, data = _envelope(record)
    if ce_type not in INPUT_TYPES.get(record.role, frozenset()):
        msg = f"unknown event type {ce_type!r} on topic {record.topic}"
        raise DecodeError(msg)
    if ce_type == "chat.tool_call.v1" and isinstance(data, bytes):
        data = _json(data)  # a tool call is read in steps (R1 before the rest)
    if not isinstance(data, dict | bytes):
        raise DecodeError("data is not a JSON object")
    event = _DECODERS[ce_type](ce_id, data)
    return Inbound(source, ce_id, event, record)


def _tool_call(ce_id: str, data: Any) -> events.ToolCall | events.InvalidToolCall:
    # Everything but the arguments must be right, or the record is a dead
    # letter (R15); bad arguments get an error result (R1).
    envelope = _validate(schemas.ToolCallEnvelope, data)
    tool_call_id, chat_id = envelope.tool_call_id, str(envelope.chat_id)
    arguments = data.get("arguments")
    try:
        template_id = toolcalls.template_id(
            arguments.get("template_id") if isinstance(arguments, dict) else None
        )
        call = schemas.ToolCallData.model_validate(data)
    except toolcalls.InvalidArgumentError as exc:
        return events.InvalidToolCall(ce_id, tool_call_id, chat_id, envelope.tool, str(exc))
    except ValidationError as exc:
        error = f"invalid arguments: {describe(exc)}"
        return events.InvalidToolCall(ce_id, tool_call_id, chat_id, envelope.tool, error)
    return events.ToolCall(
        ce_id,
        tool_call_id,
        chat_id,
        str(call.owner_id),
        template_id,
        call.arguments.name,
        tuple(sorted((call.arguments.parameters or {}).items())),
        call.template_name,
    )


def _created(ce_id: str, data: dict[str, Any] | bytes) -> events.CreateAccepted:
    c = _validate(schemas.CreatedData, data)
    return events.CreateAccepted(
        ce_id,
        str(c.command_id),
        str(c.chat_id),
        str(c.workspace_id),
        c.workspace_name,
        c.owner_name,
        str(c.build_id),
        str(c.job_id),
    )


def rejection_reason(failed: schemas.CreateFailedData) -> str:
    """
    Format Coder's error as one line: ``message: detail; field: detail; …``.
    """
    reason = failed.message
    if failed.detail:
        reason += f": {failed.detail}"
    for v in failed.validations or ():
        reason += f"; {v.field}: {v.detail}"
    return reason


def _create_failed(ce_id: str, data: dict[str, Any] | bytes) -> events.CreateRejected:
    f = _validate(schemas.CreateFailedData, data)
    return events.CreateRejected(ce_id, str(f.command_id), str(f.chat_id), rejection_reason(f))


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _job_updated(ce_id: str, data: dict[str, Any] | bytes) -> JobReported:
    j = _validate(schemas.JobUpdatedData, data)
    agents = tuple(Agent(str(a.id), a.name) for a in j.agents or ())
    job = Job(
        str(j.job_id),
        str(j.workspace_id),
        str(j.build_id),
        j.transition,
        j.status,
        j.error,
        agents,
        _aware(j.occurred_at),
    )
    return JobReported(ce_id, job)


def _heartbeat(_ce_id: str, data: dict[str, Any] | bytes) -> HeartbeatReported:
    h = _validate(schemas.HeartbeatData, data)
    return HeartbeatReported(
        str(h.agent_id), str(h.workspace_id), h.lifecycle_state, _aware(h.occurred_at)
    )


_DECODERS: dict[str, Any] = {
    "chat.tool_call.v1": _tool_call,
    "coder.workspace.created.v1": _created,
    "coder.workspace.create_failed.v1": _create_failed,
    "coder.provisioner_job.updated.v1": _job_updated,
    "coder.agent.heartbeat.v1": _heartbeat,
}


def encode_headers(
    source: str, ce_id: str, ce_type: str, ce_time: datetime
) -> list[tuple[str, bytes]]:
    """
    Return the binary-mode CloudEvents headers of an output record.
    """
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", ce_id.encode()),
        ("ce_source", source.encode()),
        ("ce_type", ce_type.encode()),
        ("ce_time", ce_time.astimezone(UTC).isoformat().replace("+00:00", "Z").encode()),
        ("content-type", JSON.encode()),
    ]
