"""
The watch-ws reader against a raw socket server that writes exactly the frames a test needs.

The fake Coder (an aiohttp WebSocket server) exercises the common path in
test_coder_client.py; these are the frames aiohttp's server never sends on
its own: fragments, pings in the middle of a message, masked or binary
frames, oversized messages, a chunked refusal, a wrong handshake.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from yarl import URL

from coder import websocket
from coder.errors import CoderProtocolError, CoderUnavailableError

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, str], Awaitable[None]]


def frame(opcode: int, payload: bytes, *, final: bool = True, mask: bool = False) -> bytes:
    head = bytes([(0x80 if final else 0) | opcode])
    size = len(payload)
    if size < 126:
        head += bytes([(0x80 if mask else 0) | size])
    elif size < 65536:
        head += bytes([(0x80 if mask else 0) | 126]) + size.to_bytes(2)
    else:
        head += bytes([(0x80 if mask else 0) | 127]) + size.to_bytes(8)
    if mask:
        key = os.urandom(4)
        return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + payload


async def client_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await reader.readexactly(2)
    assert second & 0x80, "a client frame must be masked"
    size = second & 0x7F
    key = await reader.readexactly(4)
    body = await reader.readexactly(size)
    return first & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(body))


def accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()  # noqa: S324


async def upgrade_from(
    head: str,
    writer: asyncio.StreamWriter,
    *,
    accept_as: Callable[[str], str] = accept,
    extra: str = "",
) -> None:
    key = next(
        line.split(":", 1)[1].strip()
        for line in head.split("\r\n")
        if line.lower().startswith("sec-websocket-key:")
    )
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + f"Sec-WebSocket-Accept: {accept_as(key)}\r\n{extra}\r\n".encode()
    )
    await writer.drain()


@dataclass
class Server:
    script: Script | None = None
    heads: list[str] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            assert self.script is not None
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            self.heads.append(head)
            await self.script(reader, writer, head)
        finally:
            self.done.set()
            writer.close()

    async def connect(self, limit: int = 1 << 20) -> websocket.WatchSocket | websocket.Refused:
        return await websocket.connect(
            URL(f"http://127.0.0.1:{self.port}/api/v2/workspaces/w/watch-ws"),
            {"Coder-Session-Token": "secret"},
            address=("127.0.0.1", self.port),
            ssl_context=None,
            timeout_s=5,
            max_message_bytes=limit,
        )


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    found = Server()
    listening = await asyncio.start_server(found.handle, "127.0.0.1", 0)
    found.port = listening.sockets[0].getsockname()[1]
    try:
        yield found
    finally:
        listening.close()
        await listening.wait_closed()


def switching(accept_as: Callable[[str], str] = accept, extra: str = "") -> Script:
    async def script(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, head: str) -> None:
        await upgrade_from(head, writer, accept_as=accept_as, extra=extra)
        await asyncio.sleep(5)

    return script


async def opened(server: Server) -> websocket.WatchSocket:
    answer = await server.connect()
    assert isinstance(answer, websocket.WatchSocket)
    return answer


async def test_the_upgrade_carries_the_headers_and_a_fragmented_message_arrives_whole(
    server: Server,
) -> None:
    pongs: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: str) -> None:
        await upgrade_from(head, writer)
        writer.write(frame(0x1, b'{"type":', final=False))
        writer.write(frame(0x9, b"p1"))  # a ping between two fragments
        writer.write(frame(0x0, b'"ping"}'))
        opcode, payload = await client_frame(reader)
        assert opcode == 0xA
        pongs.append(payload)
        assert await client_frame(reader) == (0x8, (1000).to_bytes(2))  # the goodbye

    server.script = script
    socket = await opened(server)
    assert await socket.receive() == '{"type":"ping"}'
    await asyncio.wait_for(socket.close(5), 1)  # the server closed at once after the goodbye
    assert pongs == [b"p1"]
    head = server.heads[0]
    assert head.startswith("GET /api/v2/workspaces/w/watch-ws HTTP/1.1\r\n")
    assert "Coder-Session-Token: secret\r\n" in head
    assert "Sec-WebSocket-Version: 13\r\n" in head


def then(*frames: bytes, wait_s: float = 5.0) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: str) -> None:
        await upgrade_from(head, writer)
        for data in frames:
            writer.write(data)
        await writer.drain()
        await asyncio.wait_for(reader.read(), wait_s)

    return script


async def test_many_messages_arrive_in_order_and_reading_resumes_after_a_pause(
    server: Server,
) -> None:
    texts = [f'{{"type":"data","data":{i}}}' for i in range(100)]
    server.script = then(*(frame(0x1, t.encode()) for t in texts))
    socket = await opened(server)
    await asyncio.sleep(0.2)  # every frame is in: the socket paused after 16
    assert [await socket.receive() for _ in texts] == texts
    await socket.close(1)


async def test_a_1002_close_is_a_protocol_error_with_coders_reason_and_is_answered(
    server: Server,
) -> None:
    answered: list[tuple[int, bytes]] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: str) -> None:
        await upgrade_from(head, writer)
        writer.write(frame(0x1, b'{"type":"ping"}'))
        writer.write(frame(0x8, (1002).to_bytes(2) + b"one-way"))
        answered.append(await client_frame(reader))

    server.script = script
    socket = await opened(server)
    assert await socket.receive() == '{"type":"ping"}'  # what came first is still read
    with pytest.raises(CoderProtocolError, match="one-way"):
        await socket.receive()
    await server.done.wait()
    assert answered == [(0x8, (1002).to_bytes(2))]


async def test_a_normal_close_or_a_lost_connection_is_unavailable(server: Server) -> None:
    server.script = then(frame(0x8, (1001).to_bytes(2)), wait_s=1)
    socket = await opened(server)
    with pytest.raises(CoderUnavailableError, match="code 1001"):
        await socket.receive()

    async def cut(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, head: str) -> None:
        await upgrade_from(head, writer)
        writer.transport.abort()

    server.script = cut
    socket = await opened(server)
    with pytest.raises(CoderUnavailableError, match="lost"):
        await socket.receive()


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (frame(0x2, b"\x00\x01"), "binary"),
        (frame(0x1, b"{}", mask=True), "masked"),
        (frame(0x0, b"{}"), "continuation"),
        (bytes([0xC1, 0x02]) + b"{}", "reserved bits"),
        (frame(0x1, b"\xff\xfe"), "UTF-8"),
        (frame(0x9, b"x", final=False), "control frame"),
        (frame(0x1, b"x" * 2000), "larger than the limit"),
        (frame(0x1, b"x" * 600, final=False) + frame(0x0, b"x" * 600), "larger than the limit"),
    ],
)
async def test_frames_a_one_way_server_must_not_send_end_the_watch_as_protocol_errors(
    server: Server, data: bytes, error: str
) -> None:
    server.script = then(data, wait_s=1)
    answer = await server.connect(limit=1000)
    assert isinstance(answer, websocket.WatchSocket)
    with pytest.raises(CoderProtocolError, match=error):
        await answer.receive()


async def test_a_refused_upgrade_returns_coders_status_headers_and_chunked_body(
    server: Server,
) -> None:
    async def refuse(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _head: str) -> None:
        writer.write(
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'e\r\n{"message":"sl\r\n4\r\now"}\r\n0\r\n\r\n'
        )
        await writer.drain()
        await asyncio.sleep(1)

    server.script = refuse
    answer = await server.connect()
    assert isinstance(answer, websocket.Refused)
    assert answer.status == 429
    assert answer.headers["Retry-After"] == "3"
    assert answer.body == b'{"message":"slow"}'


async def test_a_refusal_without_length_is_read_until_the_connection_ends(
    server: Server,
) -> None:
    async def refuse(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _head: str) -> None:
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n\r\nno such route")

    server.script = refuse
    answer = await server.connect()
    assert isinstance(answer, websocket.Refused)
    assert (answer.status, answer.body) == (404, b"no such route")


@pytest.mark.parametrize(
    "script",
    [
        switching(accept_as=lambda _key: "d3Jvbmc="),
        switching(extra="Sec-WebSocket-Extensions: permessage-deflate\r\n"),
    ],
)
async def test_an_upgrade_with_a_wrong_accept_or_an_unasked_extension_is_refused(
    server: Server, script: Script
) -> None:
    server.script = script
    with pytest.raises(CoderProtocolError, match="not a WebSocket upgrade"):
        await server.connect()


async def test_a_connection_closed_during_the_upgrade_is_unavailable(server: Server) -> None:
    async def hang_up(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _head: str) -> None:
        writer.write(b"HTTP/1.1 101 Switch")
        await writer.drain()

    server.script = hang_up
    with pytest.raises(CoderUnavailableError, match="during the upgrade"):
        await server.connect()
