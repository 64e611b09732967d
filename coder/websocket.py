"""
Follow Coder's one-way ``watch-ws`` WebSocket with one small protocol object per connection.

The bridge holds a watch open for every bound workspace, thousands at once,
and each is quiet for hours. aiohttp's client WebSocket keeps the upgrade's
HTTP response, two parsers, two queues and a heartbeat timer per connection
(a watch cost 17 KB of RSS with it, 6.5 KB with this; docs/benchmarks.md);
here a connection is an ``asyncio.Protocol`` holding a byte buffer and the
messages not read yet: no task, no timer and no HTTP machinery once upgraded.

It speaks the part of RFC 6455 a client of a one-way server needs: the
upgrade (checking ``Sec-WebSocket-Accept``, offering no extension), unmasked
server frames (text, whole or fragmented; binary is refused as the caller
refuses it), pings answered with pongs, a close answered and ended. It sends
nothing but pongs and the closing frame. Coder's sender (coderd/httpapi
``OneWayWebSocketEventSender`` on github.com/coder/websocket) writes one
text frame per event and pings every 15 s.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from coder.errors import CoderProtocolError, CoderUnavailableError

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
_MAX_HEAD_BYTES = 64 * 1024
_MAX_REFUSAL_BYTES = 64 * 1024
_PAUSE_AT = 16  # unread messages before the socket stops reading
_CLOSE_NORMAL = 1000
_CLOSE_PROTOCOL_ERROR = 1002
_TEXT, _BINARY, _CONTINUATION, _CLOSE, _PING, _PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


@dataclass(frozen=True, slots=True)
class Refused:
    """
    Hold the answer to an upgrade that was not ``101 Switching Protocols``.
    """

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


async def connect(  # noqa: PLR0913 - one argument per aspect of the connection
    url: URL,
    headers: Mapping[str, str],
    *,
    address: tuple[str, int],
    ssl_context: ssl.SSLContext | None,
    timeout_s: float,
    max_message_bytes: int,
) -> WatchSocket | Refused:
    """
    Connect to ``address``, ask ``url`` for a WebSocket upgrade; return the socket or the refusal.

    Raise ``OSError`` (``ssl.SSLError`` included) or ``TimeoutError`` when
    connecting fails, ``CoderProtocolError`` for an upgrade answer that breaks
    the protocol, ``CoderUnavailableError`` when the connection ends first.
    """
    loop = asyncio.get_running_loop()
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {url.raw_path_qs} HTTP/1.1",
        f"Host: {url.host_port_subcomponent}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name} holds a line break")
        lines.append(f"{name}: {value}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    transport: asyncio.Transport | None = None
    try:
        async with asyncio.timeout(timeout_s):
            transport, socket = await loop.create_connection(
                lambda: WatchSocket(key, max_message_bytes),
                address[0],
                address[1],
                ssl=ssl_context,
                server_hostname=url.host if ssl_context is not None else None,
            )
            transport.write(request)
            answer = await socket.upgraded()
    except BaseException:
        if transport is not None:
            transport.close()
        raise
    if isinstance(answer, Refused):
        transport.close()
    return answer


class WatchSocket(asyncio.Protocol):
    """
    Read one upgraded connection: answer pings, collect text messages, end on close or loss.
    """

    __slots__ = (
        "_buffer",
        "_ended",
        "_fragments",
        "_key",
        "_limit",
        "_messages",
        "_paused",
        "_refused",
        "_transport",
        "_upgrade",
        "_waiter",
    )

    def __init__(self, key: str, max_message_bytes: int) -> None:
        self._key = key
        self._limit = max_message_bytes
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._upgrade: asyncio.Future[WatchSocket | Refused] | None = None
        self._refused: tuple[int, CIMultiDictProxy[str], int | None] | None = None
        self._fragments: list[bytes] | None = None
        self._messages: list[str] = []
        self._waiter: asyncio.Future[None] | None = None
        self._ended: Exception | None = None
        self._paused = False

    # --- what the caller uses ---------------------------------------------------

    async def upgraded(self) -> WatchSocket | Refused:
        """
        Wait for the upgrade's answer: this socket when it switched protocols, else the refusal.
        """
        if self._upgrade is None:
            return self
        return await self._upgrade

    async def receive(self) -> str:
        """
        Return the next text message; raise what ended the connection once all are read.
        """
        while not self._messages:
            if self._ended is not None:
                raise self._ended
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = self._messages.pop(0)
        if self._paused and len(self._messages) < _PAUSE_AT // 2 and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return message

    def get_extra_info(self, name: str) -> Any:
        """
        Return the transport's ``name`` (``socket``, ``peername``...), or None once closed.
        """
        return None if self._transport is None else self._transport.get_extra_info(name)

    async def close(self, timeout_s: float) -> None:
        """
        Say goodbye (close code 1000), wait up to ``timeout_s`` for Coder to close; idempotent.
        """
        if self._ended is None:
            self._ended = CoderUnavailableError("the watch was closed")
            self._send(_CLOSE, _CLOSE_NORMAL.to_bytes(2))
        try:
            async with asyncio.timeout(timeout_s):
                while self._transport is not None:  # Coder answers and closes the connection
                    self._waiter = asyncio.get_running_loop().create_future()
                    await self._waiter
        except TimeoutError:
            pass
        finally:
            self._waiter = None
            if self._transport is not None:
                self._transport.close()

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """
        Keep the transport and start waiting for the upgrade's answer.
        """
        self._transport = transport  # type: ignore[assignment] # a stream transport
        self._upgrade = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        """
        Read the upgrade's answer, then frames.
        """
        upgrade = self._upgrade
        if upgrade is not None and upgrade.done():
            return  # refused: the caller closes the connection
        self._buffer += data
        try:
            if upgrade is not None:
                self._read_answer()
            else:
                self._read_frames()
        except CoderProtocolError as exc:
            self._end(exc, code=_CLOSE_PROTOCOL_ERROR)

    def connection_lost(self, exc: Exception | None) -> None:
        """
        End the upgrade or the stream: the reader gets what was read, then the error.
        """
        upgrade = self._upgrade
        if upgrade is not None and not upgrade.done():
            if self._refused is not None and self._refused[2] is None:
                self._finish_refusal(bytes(self._buffer))  # a body that ends with the connection
            else:
                reason = f" ({type(exc).__name__})" if exc is not None else ""
                upgrade.set_exception(
                    CoderUnavailableError(f"the connection closed during the upgrade{reason}")
                )
        if self._ended is None:
            reason = type(exc).__name__ if exc is not None else "no close frame"
            self._ended = CoderUnavailableError(f"the watch connection was lost ({reason})")
        self._transport = None
        self._buffer = bytearray()
        self._wake()

    # --- the upgrade ----------------------------------------------------------------

    def _read_answer(self) -> None:
        if self._refused is not None:
            self._read_refusal()
            return
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _MAX_HEAD_BYTES:
                raise CoderProtocolError("the watch-ws upgrade answer's head is too large")
            return
        status, headers = _head(bytes(self._buffer[:end]))
        del self._buffer[: end + 4]
        if status != 101:
            self._refused = (status, headers, _body_length(headers))
            self._read_refusal()
            return
        accept = base64.b64encode(hashlib.sha1(self._key.encode() + _GUID).digest()).decode()  # noqa: S324 - RFC 6455
        if (
            headers.get("Upgrade", "").lower() != "websocket"
            or "upgrade" not in headers.get("Connection", "").lower()
            or headers.get("Sec-WebSocket-Accept") != accept
            or "Sec-WebSocket-Extensions" in headers
        ):
            raise CoderProtocolError("Coder's watch-ws upgrade answer is not a WebSocket upgrade")
        if self._upgrade is not None:
            self._upgrade.set_result(self)
        self._upgrade = None  # upgraded: from here on, frames
        self._buffer = bytearray(self._buffer)  # drop the head's allocation
        self._read_frames()

    def _read_refusal(self) -> None:
        wanted = self._refused[2] if self._refused is not None else 0
        if wanted is None:
            if len(self._buffer) > _MAX_REFUSAL_BYTES:
                self._finish_refusal(bytes(self._buffer[:_MAX_REFUSAL_BYTES]))
            return  # the body ends with the connection
        if wanted < 0:
            body = _dechunked(self._buffer)
            if body is not None:
                self._finish_refusal(body)
            elif len(self._buffer) > _MAX_REFUSAL_BYTES:
                self._finish_refusal(bytes(self._buffer[:_MAX_REFUSAL_BYTES]))
        elif len(self._buffer) >= min(wanted, _MAX_REFUSAL_BYTES):
            self._finish_refusal(bytes(self._buffer[: min(wanted, _MAX_REFUSAL_BYTES)]))

    def _finish_refusal(self, body: bytes) -> None:
        if self._refused is None or self._upgrade is None or self._upgrade.done():
            return
        status, headers, _ = self._refused
        self._upgrade.set_result(Refused(status, headers, body))

    # --- frames -----------------------------------------------------------------------

    def _read_frames(self) -> None:
        buffer = self._buffer
        at = 0
        while self._ended is None:
            frame = _frame(buffer, at, self._limit)
            if frame is None:
                break
            final, opcode, start, at = frame
            self._frame(final, opcode, bytes(buffer[start:at]))
        if at == len(buffer):
            self._buffer = bytearray()  # idle watches keep no buffer
        elif at:
            del buffer[:at]

    def _frame(self, final: bool, opcode: int, payload: bytes) -> None:
        if opcode >= _CLOSE:
            if not final or len(payload) > 125:
                raise CoderProtocolError("Coder sent a fragmented or oversized control frame")
            self._control(opcode, payload)
            return
        self._data(opcode, payload)
        if final:
            self._deliver()

    def _data(self, opcode: int, payload: bytes) -> None:
        if opcode == _CONTINUATION:
            if self._fragments is None:
                raise CoderProtocolError("Coder sent a continuation frame out of a message")
            self._fragments.append(payload)
            if sum(map(len, self._fragments)) > self._limit:
                raise CoderProtocolError("Coder sent a watch message larger than the limit")
        elif opcode in {_TEXT, _BINARY}:
            if self._fragments is not None:
                raise CoderProtocolError("Coder started a message inside another")
            if opcode == _BINARY:
                raise CoderProtocolError("Coder sent a binary watch message")
            self._fragments = [payload]
        else:
            raise CoderProtocolError(f"Coder sent a frame with the unknown opcode {opcode}")

    def _deliver(self) -> None:
        whole, self._fragments = b"".join(self._fragments or ()), None
        try:
            self._messages.append(whole.decode())
        except UnicodeDecodeError:
            raise CoderProtocolError("Coder sent a watch message that is not UTF-8") from None
        if len(self._messages) >= _PAUSE_AT and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == _PING:
            self._send(_PONG, payload)
        elif opcode == _CLOSE:
            code = int.from_bytes(payload[:2]) if len(payload) >= 2 else 1005
            reason = payload[2:].decode(errors="replace")
            if code == _CLOSE_PROTOCOL_ERROR:
                ended: Exception = CoderProtocolError(
                    f"Coder closed the watch: {reason or 'protocol error'}"
                )
            else:
                ended = CoderUnavailableError(f"Coder closed the watch (code {code})")
            self._end(ended, code=code if code != 1005 else _CLOSE_NORMAL)
        elif opcode != _PONG:
            raise CoderProtocolError(f"Coder sent a frame with the unknown opcode {opcode}")

    def _send(self, opcode: int, payload: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(_masked(opcode, payload))

    def _end(self, why: Exception, *, code: int) -> None:
        """
        End the connection with a close frame, keeping ``why`` for the reader.
        """
        self._ended = why
        if self._upgrade is None:
            self._send(_CLOSE, code.to_bytes(2))
        if self._transport is not None:
            self._transport.close()
        upgrade = self._upgrade
        if upgrade is not None and not upgrade.done():
            upgrade.set_exception(why)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def _head(raw: bytes) -> tuple[int, CIMultiDictProxy[str]]:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise CoderProtocolError("Coder's answer to the watch-ws upgrade is not HTTP/1.1")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise CoderProtocolError("Coder's answer to the watch-ws upgrade has a bad header")
        headers.add(name.strip(), value.strip())
    return int(parts[1]), CIMultiDictProxy(headers)


def _body_length(headers: CIMultiDictProxy[str]) -> int | None:
    """
    Return the refusal body's length, -1 when chunked, None when it ends with the connection.
    """
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        return -1
    length = headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


def _dechunked(raw: bytearray) -> bytes | None:
    """
    Return a whole chunked body, or None while chunks are still missing.
    """
    body, at = bytearray(), 0
    while True:
        end = raw.find(b"\r\n", at)
        if end < 0:
            return None
        try:
            size = int(bytes(raw[at:end]).split(b";", 1)[0], 16)
        except ValueError:
            raise CoderProtocolError("Coder's refusal has a bad chunk") from None
        if size == 0:
            return bytes(body)
        if len(raw) < end + 2 + size + 2:
            return None
        body += raw[end + 2 : end + 2 + size]
        at = end + 2 + size + 2


def _frame(buffer: bytearray, at: int, limit: int) -> tuple[bool, int, int, int] | None:
    """
    Read the frame header at ``at``: (final, opcode, payload start, payload end), None if partial.
    """
    if len(buffer) - at < 2:
        return None
    first, second = buffer[at], buffer[at + 1]
    if first & 0x70:
        raise CoderProtocolError("Coder sent a frame with reserved bits set")
    if second & 0x80:
        raise CoderProtocolError("Coder sent a masked frame")
    length, start = second & 0x7F, at + 2
    if length == 126:
        if len(buffer) - at < 4:
            return None
        length, start = int.from_bytes(buffer[at + 2 : at + 4]), at + 4
    elif length == 127:
        if len(buffer) - at < 10:
            return None
        length, start = int.from_bytes(buffer[at + 2 : at + 10]), at + 10
    if length > limit:
        raise CoderProtocolError("Coder sent a watch message larger than the limit")
    if len(buffer) < start + length:
        return None
    return bool(first & 0x80), first & 0x0F, start, start + length


def _masked(opcode: int, payload: bytes) -> bytes:
    """
    Return a final client frame (masked, as RFC 6455 requires of clients) of at most 125 bytes.
    """
    mask, size = os.urandom(4), len(payload)
    key = (mask * (size // 4 + 1))[:size]
    body = (int.from_bytes(payload) ^ int.from_bytes(key)).to_bytes(size) if size else b""
    return bytes([0x80 | opcode, 0x80 | size]) + mask + body
