"""
Read Coder's watch events, from a one-way WebSocket message or a server-sent event stream.

Both carry ``codersdk.ServerSentEvent`` (codersdk/serversentevents.go): a type,
``ping``, ``data`` or ``error``, and for ``data`` and ``error`` a JSON payload
(a ``Workspace``, or a ``Response``). Over the WebSocket each text message is
``{"type": ..., "data": ...}``; over SSE coderd's ``ServerSentEventSender``
writes ``event: <type>`` and ``data: <json>`` lines ended by a blank line.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterable
from dataclasses import dataclass
from typing import Any

from coder.errors import CoderProtocolError

MAX_EVENT_BYTES = 4 * 1024 * 1024  # aiohttp's default WebSocket message limit, for both


@dataclass(frozen=True, slots=True)
class Event:
    """
    Hold one watch event: its type and its decoded payload (None for pings).
    """

    type: str
    data: Any = None


def from_message(text: str) -> Event:
    """
    Decode one WebSocket text message.
    """
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise CoderProtocolError("Coder sent a watch message that is not JSON") from exc
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        raise CoderProtocolError("Coder sent a watch message without a type")
    return Event(body["type"], body.get("data"))


async def from_stream(chunks: AsyncIterable[bytes]) -> AsyncGenerator[Event, None]:
    """
    Decode a server-sent event stream, chunk by chunk, into events.

    Comment lines (``:``) and unknown fields are skipped, as the SSE format says.
    """
    buffer = bytearray()
    kind, data = "", list[bytes]()
    async for chunk in chunks:
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end]).rstrip(b"\r")
            del buffer[: end + 1]
            if line:
                kind, data = _field(line, kind, data)
                continue
            if kind or data:
                yield _event(kind, data)
            kind, data = "", []
        if len(buffer) > MAX_EVENT_BYTES:
            raise CoderProtocolError("Coder sent a watch event larger than 4 MiB")


def _field(line: bytes, kind: str, data: list[bytes]) -> tuple[str, list[bytes]]:
    if line.startswith(b":"):
        return kind, data
    name, _, value = line.partition(b":")
    value = value.removeprefix(b" ")
    if name == b"event":
        return value.decode(errors="replace"), data
    if name == b"data":
        return kind, [*data, value]
    return kind, data


def _event(kind: str, data: list[bytes]) -> Event:
    if not data:
        return Event(kind or "message")
    try:
        return Event(kind or "message", json.loads(b"\n".join(data)))
    except ValueError as exc:
        raise CoderProtocolError(f"Coder sent a {kind!r} event whose data is not JSON") from exc
