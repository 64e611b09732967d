"""
Serve Coder's workspace watches: ``watch-ws`` (one-way WebSocket) and ``watch`` (SSE).

coderd/workspaces.go ``watchWorkspace`` sends a ``ping`` event, then the
workspace now, then the workspace again on every change. Events are
``codersdk.ServerSentEvent`` (codersdk/serversentevents.go): over the
WebSocket one JSON text message ``{"type": ..., "data": ...}`` each
(coderd/httpapi ``OneWayWebSocketEventSender``, which closes with 1002 when
the client sends anything and pings every 15 s); over SSE ``event: <type>``
and, when there is data, ``data: <json>`` lines followed by a blank line
(``ServerSentEventSender``, which also writes ``event: ping`` every
heartbeat). Snapshots are rendered when the change happens, so each watcher
sees every state the fake goes through.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from devtools.fake_coder import render, wire
from devtools.fake_coder.api import lookup_workspace
from devtools.fake_coder.state import Workspace, World

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
}


@dataclass(slots=True, eq=False)
class Watcher:
    """
    Track one open watch: its workspace, its queue of snapshots (None ends it), its transport.
    """

    workspace_id: uuid.UUID
    request: web.Request
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)

    def end(self) -> None:
        """
        Ask the watch's handler to finish.
        """
        self.queue.put_nowait(None)


def _event(kind: str, data: Any = None) -> str:
    return wire.go_json({"type": kind, "data": data}).decode()


class WatchHub:
    """
    Fan workspace changes out to open watches; drop or close them on demand.
    """

    def __init__(self, world: World, heartbeat_s: float, ws_enabled: Callable[[], bool]) -> None:
        self._world = world
        self._heartbeat_s = heartbeat_s
        self._ws_enabled = ws_enabled
        self.watchers: set[Watcher] = set()
        self.opened = 0
        world.listeners.append(self._changed)

    def routes(self) -> list[web.RouteDef]:
        """
        Return the two watch routes.
        """
        return [
            web.get("/api/v2/workspaces/{workspace}/watch-ws", self.watch_ws),
            web.get("/api/v2/workspaces/{workspace}/watch", self.watch_sse),
        ]

    def _changed(self, workspace: Workspace) -> None:
        watchers = [w for w in self.watchers if w.workspace_id == workspace.id]
        if not watchers:
            return
        snapshot = render.workspace_json(self._world, workspace)
        for watcher in watchers:
            watcher.queue.put_nowait(snapshot)

    def drop_all(self) -> int:
        """
        Cut every open watch's connection without a goodbye, as a network failure would.
        """
        dropped = list(self.watchers)
        for watcher in dropped:
            transport = watcher.request.transport
            if transport is not None:
                transport.abort()
            watcher.end()
        return len(dropped)

    def close_all(self) -> None:
        """
        End every open watch cleanly (the server is stopping).
        """
        for watcher in list(self.watchers):
            watcher.end()

    def _open(self, request: web.Request, workspace: Workspace) -> Watcher:
        watcher = Watcher(workspace.id, request)
        self.watchers.add(watcher)
        self.opened += 1
        self._world.notify()
        return watcher

    def _close(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)
        self._world.notify()

    async def watch_ws(self, request: web.Request) -> web.StreamResponse:
        """
        Stream the workspace over a one-way WebSocket; 404 "Route not found." when disabled.
        """
        if not self._ws_enabled():
            return wire.respond(404, wire.ROUTE_NOT_FOUND)
        workspace = lookup_workspace(request, self._world)
        if isinstance(workspace, web.Response):
            return workspace
        socket = web.WebSocketResponse(heartbeat=self._heartbeat_s)
        await socket.prepare(request)
        watcher = self._open(request, workspace)
        reader = asyncio.create_task(_refuse_client_messages(socket, watcher))
        try:
            await socket.send_str(_event("ping"))
            await socket.send_str(_event("data", render.workspace_json(self._world, workspace)))
            while (snapshot := await watcher.queue.get()) is not None:
                await socket.send_str(_event("data", snapshot))
        except ConnectionError:
            pass
        finally:
            self._close(watcher)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            if not socket.closed:
                await socket.close(code=1000, message=b"Connection closed")
        return socket

    async def watch_sse(self, request: web.Request) -> web.StreamResponse:
        """
        Stream the workspace as server-sent events, with a ping every heartbeat.
        """
        workspace = lookup_workspace(request, self._world)
        if isinstance(workspace, web.Response):
            return workspace
        stream = web.StreamResponse(status=200, headers=SSE_HEADERS)
        await stream.prepare(request)
        watcher = self._open(request, workspace)
        try:
            await stream.write(b"event: ping\n\n")
            await _sse_data(stream, render.workspace_json(self._world, workspace))
            while True:
                try:
                    snapshot = await asyncio.wait_for(watcher.queue.get(), self._heartbeat_s)
                except TimeoutError:
                    await stream.write(b"event: ping\n\n")
                    continue
                if snapshot is None:
                    break
                await _sse_data(stream, snapshot)
            with contextlib.suppress(ConnectionError):
                await stream.write_eof()
        except ConnectionError:
            pass
        finally:
            self._close(watcher)
        return stream


async def _sse_data(stream: web.StreamResponse, snapshot: dict[str, Any]) -> None:
    await stream.write(b"event: data\ndata: " + wire.go_json(snapshot) + b"\n")


async def _refuse_client_messages(socket: web.WebSocketResponse, watcher: Watcher) -> None:
    """
    Close the socket as Coder does when a client talks on a one-way WebSocket.
    """
    message = await socket.receive()
    if message.type in {WSMsgType.TEXT, WSMsgType.BINARY}:
        await socket.close(code=1002, message=wire.ONE_WAY_CLOSE_REASON.encode())
    watcher.end()
