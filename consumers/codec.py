"""
Decode CloudEvents records into domain events, and encode outputs as CloudEvents.

Binary mode (``ce_*`` headers, JSON value) is the norm; structured mode
(``content-type: application/cloudevents+json``) is accepted on input. A
record that cannot be decoded becomes a ``DeadLetter`` with the reason (R15).

PostgreSQL stores no NUL character in ``text`` or ``jsonb``. A NUL in a tool
call's parameters gets an error result, like any bad argument (R1, R15); a NUL
in any other text that is stored (a tool call id, Coder's names and messages,
a job's error or agent names, a lifecycle state) makes the record a dead
letter, ``could not be applied: <field> contains a NUL character``:
rewriting Coder's data would hide that it was wrong. Names (a given name, a
template name) are no exception to R2: an invalid one seeds a generated
name, which holds only ``[a-z0-9-]``.

Reasons and error texts echo input (field names, the start of a template
id), so they escape control characters and stay under ``REASON_MAX_BYTES``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from consumers import schemas
from statemachine import events, toolcalls
from statemachine.model import Agent, Job, Tool

STRUCTURED = "application/cloudevents+json"
JSON = "application/json"

# A dead letter's reason, and an error text made from input: a few errors, not
# every one of a hundred thousand (they go into a Kafka header and the logs).
REASON_MAX_BYTES = 1024
_ERRORS_SHOWN = 5
_FIELD_MAX_BYTES = 96
# Kafka's framing at its largest: the batch header, then the record's length,
# attributes, timestamp and offset deltas, key and value lengths and header
# count as varints; and per header, the lengths of its name and value.
_BATCH_OVERHEAD_BYTES = 61 + 5 + 1 + 10 + 5 + 5 + 5 + 5
HEADER_OVERHEAD_BYTES = 5 + 5

# A Kafka header: Kafka allows a null value.
Header = tuple[str, bytes | None]

# Which event types each input topic (by role) carries.
INPUT_TYPES: dict[str, frozenset[str]] = {
    "tool_calls": frozenset({"chat.tool_call.v1"}),
    "workspace_command_results": frozenset(
        {
            "coder.workspace.created.v1",
            "coder.workspace.create_failed.v1",
            "coder.workspace.build_queued.v1",
            "coder.workspace.build_rejected.v1",
        }
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
    headers: Sequence[Header]


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
    | events.BuildQueued
    | events.BuildRejected
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
        return DeadLetter(printable(str(exc)), record)
    except Exception as exc:  # noqa: BLE001 - a decoder bug must not stop the stream
        return DeadLetter(printable(f"could not be decoded: {type(exc).__name__}: {exc}"), record)


_SHORT_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}
_ASCII_END = 0x80
_BMP_END = 0x10000
_CUT_MARK_BYTES = 40  # "... (1234567890 more characters)"


def _escaped(char: str) -> str:
    if char.isprintable():
        return char
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    if code < _ASCII_END:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < _BMP_END else f"\\U{code:08x}"


def printable(text: str, max_bytes: int = REASON_MAX_BYTES) -> str:
    """
    Return ``text`` with control characters escaped, in at most ``max_bytes`` of UTF-8.

    Escapes take the forms of Go's ``strconv.Quote`` (a backslash, then
    ``x00``, ``n`` or ``u0085``), as Coder's own error texts quote input. A
    text cut short ends saying how many characters were left out. What it
    returns has nothing left to escape and fits: applied again with the same
    limit, it changes nothing.
    """
    pieces: list[str] = []
    size = 0
    keep = 0  # pieces that still leave room for the cut mark
    for char in text:
        piece = _escaped(char)
        size += len(piece.encode())
        if size > max_bytes:
            return "".join(pieces[:keep]) + f"... ({len(text) - keep} more characters)"
        pieces.append(piece)
        if size <= max_bytes - _CUT_MARK_BYTES:
            keep = len(pieces)
    return "".join(pieces)


_ATTRIBUTES = ("specversion", "id", "source", "type")
_ATTRIBUTE_HEADERS = {f"ce_{name}": name for name in _ATTRIBUTES}


def _header_text(name: str, value: bytes | None) -> str:
    try:
        return value.decode() if value is not None else ""
    except UnicodeDecodeError:
        msg = f"header {name} is not UTF-8"
        raise DecodeError(msg) from None


def _read_headers(headers: Sequence[Header]) -> tuple[dict[str, Any], str | None]:
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
    Say what is wrong with the first few fields, without echoing values.

    A small record can be wrong in a hundred thousand places (a list of empty
    objects): the rest are counted, not listed. Field names come from the
    input, so they are escaped and cut.
    """
    return _describe(_errors(exc))


def _errors(exc: ValidationError) -> list[ErrorDetails]:
    # Without inputs, URLs and contexts: a hundred thousand errors cost half as much.
    return exc.errors(include_url=False, include_context=False, include_input=False)


def _describe(found: list[ErrorDetails]) -> str:
    parts = []
    for error in found[:_ERRORS_SHOWN]:
        where = ".".join(str(p) for p in error["loc"]) or "data"
        parts.append(f"{printable(where, _FIELD_MAX_BYTES)}: {error['msg']}")
    if len(found) > _ERRORS_SHOWN:
        parts.append(f"and {len(found) - _ERRORS_SHOWN} more errors")
    # Room for what callers put in front ("invalid arguments: ") within REASON_MAX_BYTES.
    return printable("; ".join(parts), REASON_MAX_BYTES - 64)


def _refuse_nul(fields: Iterable[tuple[str, str | None]]) -> None:
    """
    Dead-letter a record with a NUL in text PostgreSQL would store.
    """
    for where, text in fields:
        if text is not None and "\x00" in text:
            msg = f"could not be applied: {where} contains a NUL character"
            raise DecodeError(msg)


def _nul_argument(parameters: dict[str, str] | None) -> str | None:
    """
    Return the error text of a parameter with a NUL in its name or value, if any.
    """
    for name, value in (parameters or {}).items():
        if "\x00" in name or "\x00" in value:
            where = printable(f"arguments.parameters.{name}", _FIELD_MAX_BYTES)
            return f"invalid arguments: {where} contains a NUL character"
    return None


def _validate(model: type[BaseModel], data: Any) -> Any:
    try:
        if isinstance(data, bytes):
            return model.model_validate_json(data)
        return model.model_validate(data)
    except ValidationError as exc:
        found = _errors(exc)
        first = found[0]
        if first["type"] == "json_invalid":
            msg = f"value is not JSON: {first['msg']}"
        elif first["type"] == "model_type" and not first["loc"]:
            msg = "data is not a JSON object"
        else:
            msg = f"invalid data: {_describe(found)}"
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
    # The answer is stored under the call's id: without it there is no answer.
    _refuse_nul([("tool_call_id", envelope.tool_call_id)])
    tool_call_id, chat_id = envelope.tool_call_id, str(envelope.chat_id)
    tool = Tool(envelope.tool)
    if tool != Tool.CREATE:
        return _no_arguments_call(ce_id, data, envelope)
    arguments = data.get("arguments")
    try:
        template_id = toolcalls.template_id(
            arguments.get("template_id") if isinstance(arguments, dict) else None
        )
        call = schemas.CreateCallData.model_validate(data)
    except toolcalls.InvalidArgumentError as exc:
        # R1's text quotes the start of the template id: escape what it echoes.
        error = printable(str(exc))
        return events.InvalidToolCall(ce_id, tool_call_id, chat_id, envelope.tool, error)
    except ValidationError as exc:
        error = printable(f"invalid arguments: {describe(exc)}")
        return events.InvalidToolCall(ce_id, tool_call_id, chat_id, envelope.tool, error)
    nul = _nul_argument(call.arguments.parameters)
    if nul is not None:
        return events.InvalidToolCall(ce_id, tool_call_id, chat_id, envelope.tool, nul)
    return events.ToolCall(
        ce_id,
        tool_call_id,
        chat_id,
        str(envelope.owner_id),
        template_id,
        call.arguments.name,
        tuple(sorted((call.arguments.parameters or {}).items())),
        call.template_name,
    )


def _no_arguments_call(
    ce_id: str, data: Any, envelope: schemas.ToolCallEnvelope
) -> events.ToolCall | events.InvalidToolCall:
    """
    Decode a start_workspace or stop_workspace call: no arguments, or an object of ignored ones.
    """
    tool_call_id, chat_id = envelope.tool_call_id, str(envelope.chat_id)
    try:
        schemas.NoArgumentsCallData.model_validate(data)
    except ValidationError as exc:
        error = printable(f"invalid arguments: {describe(exc)}")
        return events.InvalidToolCall(ce_id, tool_call_id, chat_id, envelope.tool, error)
    return events.ToolCall(
        ce_id,
        tool_call_id,
        chat_id,
        str(envelope.owner_id),
        "",
        None,
        (),
        envelope.template_name,
        Tool(envelope.tool),
    )


def _created(ce_id: str, data: dict[str, Any] | bytes) -> events.CreateAccepted:
    c = _validate(schemas.CreatedData, data)
    _refuse_nul([("workspace_name", c.workspace_name), ("owner_name", c.owner_name)])
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


def rejection_reason(failed: schemas.CreateFailedData | schemas.BuildRejectedData) -> str:
    """
    Format Coder's error as one line: ``message: detail; field: detail; …``.
    """
    reason = failed.message
    if failed.detail:
        reason += f": {failed.detail}"
    for v in failed.validations or ():
        reason += f"; {v.field}: {v.detail}"
    return reason


def _refuse_nul_in_refusal(f: schemas.CreateFailedData | schemas.BuildRejectedData) -> None:
    _refuse_nul(
        [
            ("message", f.message),
            ("detail", f.detail),
            *(
                pair
                for i, v in enumerate(f.validations or ())
                for pair in (
                    (f"validations.{i}.field", v.field),
                    (f"validations.{i}.detail", v.detail),
                )
            ),
        ]
    )


def _create_failed(ce_id: str, data: dict[str, Any] | bytes) -> events.CreateRejected:
    f = _validate(schemas.CreateFailedData, data)
    _refuse_nul_in_refusal(f)
    return events.CreateRejected(ce_id, str(f.command_id), str(f.chat_id), rejection_reason(f))


def _build_queued(ce_id: str, data: dict[str, Any] | bytes) -> events.BuildQueued:
    q = _validate(schemas.BuildQueuedData, data)
    return events.BuildQueued(
        ce_id,
        str(q.command_id),
        str(q.chat_id),
        str(q.workspace_id),
        q.transition,
        str(q.build_id),
        str(q.job_id),
    )


def _build_rejected(ce_id: str, data: dict[str, Any] | bytes) -> events.BuildRejected:
    f = _validate(schemas.BuildRejectedData, data)
    _refuse_nul_in_refusal(f)
    reason = rejection_reason(f)
    return events.BuildRejected(ce_id, str(f.command_id), str(f.chat_id), f.status_code, reason)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _job_updated(ce_id: str, data: dict[str, Any] | bytes) -> JobReported:
    j = _validate(schemas.JobUpdatedData, data)
    _refuse_nul(
        [("error", j.error), *((f"agents.{i}.name", a.name) for i, a in enumerate(j.agents or ()))]
    )
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
    _refuse_nul([("lifecycle_state", h.lifecycle_state)])
    return HeartbeatReported(
        str(h.agent_id), str(h.workspace_id), h.lifecycle_state, _aware(h.occurred_at)
    )


_DECODERS: dict[str, Any] = {
    "chat.tool_call.v1": _tool_call,
    "coder.workspace.created.v1": _created,
    "coder.workspace.create_failed.v1": _create_failed,
    "coder.workspace.build_queued.v1": _build_queued,
    "coder.workspace.build_rejected.v1": _build_rejected,
    "coder.provisioner_job.updated.v1": _job_updated,
    "coder.agent.heartbeat.v1": _heartbeat,
}


def record_bytes(key: bytes | None, value: bytes | None, headers: Sequence[Header]) -> int:
    """
    Return at least the bytes a record takes in a Kafka batch of its own.
    """
    return (
        _BATCH_OVERHEAD_BYTES
        + len(key or b"")
        + len(value or b"")
        + sum(HEADER_OVERHEAD_BYTES + len(name.encode()) + len(v or b"") for name, v in headers)
    )


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
