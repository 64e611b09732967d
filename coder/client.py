"""
Call Coder's workspace API over HTTP and watch workspaces, translating every failure.

Requests follow codersdk (coder/coder): the token goes in the
``Coder-Session-Token`` header (codersdk/client.go ``Request``, ``Dial``) and
never in a URL; a success is exactly the status codersdk expects (201 for
creates, 200 for reads); anything else is read as ``ReadBodyAsError`` reads it
and raised as one of ``coder.errors``. Redirects are not followed, so the token
never travels to another host. Nothing is retried here: ``CoderUnavailableError``
carries ``retry_after_s`` for the caller's policy.

REST calls and the SSE fallback go through one aiohttp session whose pool has
no cap; ``watch-ws`` connections are ``coder.websocket`` sockets, a small
protocol object each, as a bridge holds thousands of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket as socket_module
import ssl as ssl_module
import uuid
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from coder import answers, events, models, websocket
from coder.errors import (
    CoderError,
    CoderProtocolError,
    CoderUnavailableError,
)
from telemetry import logs, metrics

log = logs.get(__name__)

SESSION_HEADER = "Coder-Session-Token"  # codersdk/client.go SessionTokenHeader
_REDACTED = "[redacted]"
_RESOLVED_S = 10.0  # how long Coder's looked-up addresses are used, as aiohttp's DNS cache


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """
    Say how a watch checks that its connection lives, in seconds.

    ``heartbeat_s``: how long a WebSocket watch may be quiet before the kernel
    probes its connection (TCP keepalive; Coder pings every 15 s too);
    ``idle_timeout_s``: the longest silence tolerated on the SSE stream
    (Coder writes a ping every 15 s).
    """

    heartbeat_s: float = 15.0
    idle_timeout_s: float = 60.0


class CoderClient:
    """
    Talk to one Coder deployment with one session token.

    Use it as an async context manager, or call ``close``. ``ssl`` is passed
    to aiohttp: True verifies with the system CAs, an ``SSLContext`` verifies
    with it, False does not verify. ``timeout_s`` bounds each request;
    a watch has no total bound, but its connection gets ``timeout_s`` and
    ``watch`` says how it checks the stream still lives.
    """

    def __init__(
        self,
        base_url: str,
        session_token: str,
        *,
        ssl: ssl_module.SSLContext | bool = True,
        timeout_s: float = 30.0,
        watch: WatchSettings | None = None,
    ) -> None:
        base = URL(base_url)
        if base.scheme not in {"http", "https"} or not base.host:
            raise ValueError("base_url must be an http or https URL with a host")
        if not session_token:
            raise ValueError("session_token must not be empty")
        self._base = base
        self._token = session_token
        self._ssl = ssl
        self._timeout_s = timeout_s
        self._watch = watch or WatchSettings()
        self._session: aiohttp.ClientSession | None = None
        self._resolved: tuple[list[tuple[str, int]], float] | None = None
        self._tls_context: ssl_module.SSLContext | None = None

    def __repr__(self) -> str:
        return f"CoderClient(base_url={str(self._base)!r}, session_token={_REDACTED!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """
        Close the connection pool; the client cannot be used afterwards.
        """
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def create_workspace(
        self,
        owner: str | uuid.UUID,
        template_id: str | uuid.UUID,
        name: str,
        rich_parameter_values: Mapping[str, str] | None = None,
        *,
        ttl_ms: int | None = None,
    ) -> models.Workspace:
        """
        Create workspace ``name`` for ``owner`` (a user id, username or ``me``) and start it.

        ``POST /api/v2/users/{owner}/workspaces`` (coderd/workspaces.go
        ``postUserWorkspaces``): 201 with the Workspace, whose latest build is
        pending. Coder answers 400 for a bad name or unknown template, 403
        when the template may not be used, 409 when the owner has a live
        workspace of that name (case-insensitive).
        """
        body: dict[str, Any] = {
            "template_id": str(template_id),
            "name": name,
            "rich_parameter_values": [
                {"name": key, "value": value}
                for key, value in (rich_parameter_values or {}).items()
            ],
        }
        if ttl_ms is not None:
            body["ttl_ms"] = ttl_ms
        url = self._url("users", str(owner), "workspaces")
        raw = await self._call("POST", url, expected=201, body=body)
        return models.workspace(raw)

    async def workspace(
        self, workspace_id: str | uuid.UUID, *, include_deleted: bool = False
    ) -> models.Workspace:
        """
        Return a workspace by id; once deleted, ``WorkspaceGoneError`` unless ``include_deleted``.
        """
        url = self._url("workspaces", str(workspace_id))
        params = {"include_deleted": "true"} if include_deleted else None
        return models.workspace(await self._call("GET", url, expected=200, params=params))

    async def workspace_by_owner_and_name(
        self, owner: str | uuid.UUID, name: str, *, include_deleted: bool = False
    ) -> models.Workspace:
        """
        Return the owner's workspace called ``name`` (case-insensitive); 404 when there is none.
        """
        url = self._url("users", str(owner), "workspace", name)
        params = {"include_deleted": "true" if include_deleted else "false"}
        return models.workspace(await self._call("GET", url, expected=200, params=params))

    async def create_build(
        self, workspace_id: str | uuid.UUID, transition: models.Transition | str
    ) -> models.WorkspaceBuild:
        """
        Queue a ``start``, ``stop`` or ``delete`` build; Coder answers 409 while one is active.
        """
        url = self._url("workspaces", str(workspace_id), "builds")
        body = {"transition": str(transition)}
        return models.workspace_build(await self._call("POST", url, expected=201, body=body))

    async def watch(self, workspace_id: str | uuid.UUID) -> AsyncGenerator[models.Workspace, None]:
        """
        Yield the workspace now and again on every change, until the caller stops iterating.

        Uses ``watch-ws`` (a one-way WebSocket) and falls back to the SSE
        ``watch`` route when ``watch-ws`` answers 404 (Coder before it
        existed). The stream never ends on its own: when Coder or the network
        ends it, ``CoderUnavailableError`` is raised, and the caller watches
        again. Close the iterator (``contextlib.aclosing``) to stop early.
        """
        socket = await self._connect_watch(workspace_id)
        if socket is None:
            log.info("coder_watch_fell_back_to_sse", workspace_id=str(workspace_id))
            async for fallback in self._watch_sse(workspace_id):
                yield fallback
                del fallback  # hold no snapshot while the stream is quiet
            return
        translated = self._translated("watch-ws")
        try:
            while True:
                with translated:
                    text = await socket.receive()
                snapshot = self._snapshot(events.from_message(text), workspace_id)
                # A watch is quiet for hours: keep neither the message nor the
                # snapshot (a few KB each) while waiting for the next.
                del text
                if snapshot is not None:
                    yield snapshot
                    del snapshot
        finally:
            await socket.close(self._timeout_s)

    async def _connect_watch(self, workspace_id: str | uuid.UUID) -> websocket.WatchSocket | None:
        """
        Open the workspace's ``watch-ws``; None when Coder has no such route (404).
        """
        url = self._url("workspaces", str(workspace_id), "watch-ws")
        with self._translated("watch-ws"):
            answer: websocket.WatchSocket | websocket.Refused | None = None
            error: OSError | None = None
            for address in await self._addresses():
                try:
                    answer = await websocket.connect(
                        url,
                        self._headers(),
                        address=address,
                        ssl_context=self._tls(),
                        timeout_s=self._timeout_s,
                        max_message_bytes=events.MAX_EVENT_BYTES,
                    )
                    break
                except OSError as exc:
                    error = exc
            if answer is None:
                raise error or OSError(f"no address for {self._base.host}")
        if isinstance(answer, websocket.Refused):
            if answer.status == 404:
                return None
            if answer.status < 400:
                message = f"Coder answered the watch-ws upgrade with status {answer.status}"
                raise CoderProtocolError(message) from None
            raise answers.error_for(answer.status, answer.headers, answer.body) from None
        _keep_alive(answer.get_extra_info("socket"), self._watch.heartbeat_s)
        return answer

    async def _addresses(self) -> list[tuple[str, int]]:
        """
        Return Coder's addresses, looked up at most every ``_RESOLVED_S`` (each watch connects).
        """
        host, port = self._base.host or "", self._base.port or 443
        loop = asyncio.get_running_loop()
        if self._resolved is not None and self._resolved[1] > loop.time():
            return self._resolved[0]
        infos = await loop.getaddrinfo(host, port, type=socket_module.SOCK_STREAM)
        found = list(dict.fromkeys((str(info[4][0]), int(info[4][1])) for info in infos))
        self._resolved = (found, loop.time() + _RESOLVED_S)
        return found

    def _tls(self) -> ssl_module.SSLContext | None:
        """
        Return the TLS context of watch connections (one for all of them), None over http.
        """
        if self._base.scheme != "https":
            return None
        if isinstance(self._ssl, ssl_module.SSLContext):
            return self._ssl
        if self._tls_context is None:
            self._tls_context = ssl_module.create_default_context()
            if not self._ssl:
                self._tls_context.check_hostname = False
                self._tls_context.verify_mode = ssl_module.CERT_NONE
        return self._tls_context

    async def _watch_sse(
        self, workspace_id: str | uuid.UUID
    ) -> AsyncGenerator[models.Workspace, None]:
        url = self._url("workspaces", str(workspace_id), "watch")
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._timeout_s, sock_read=self._watch.idle_timeout_s
        )
        with self._translated("watch"):
            response = await self._http().get(
                url,
                headers=self._headers("text/event-stream"),
                ssl=self._ssl,
                timeout=timeout,
                allow_redirects=False,
            )
        stream = events.from_stream(response.content.iter_any())
        try:
            if response.status != 200:
                with self._translated("watch"):
                    raw = await response.read()
                raise answers.error_for(response.status, response.headers, raw)
            while True:
                with self._translated("watch"):
                    event = await anext(stream, None)
                if event is None:
                    raise CoderUnavailableError("Coder ended the watch stream")
                snapshot = self._snapshot(event, workspace_id)
                del event
                if snapshot is not None:
                    yield snapshot
                    del snapshot  # hold no snapshot while the stream is quiet
        finally:
            await stream.aclose()
            response.close()

    @staticmethod
    def _snapshot(event: events.Event, workspace_id: str | uuid.UUID) -> models.Workspace | None:
        if event.type == "data":
            return models.workspace(event.data if isinstance(event.data, dict) else {})
        if event.type == "error":
            message = event.data.get("message", "") if isinstance(event.data, dict) else ""
            log.warning("coder_watch_error_event", workspace_id=str(workspace_id), message=message)
        return None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No cap on connections: a watch holds its connection for as long as it
            # lives, so aiohttp's default of 100 would cap the watches at 100 and
            # leave every other request waiting for a free one until it timed out.
            # Callers bound how many requests they make at once.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            )
        return self._session

    def _url(self, *segments: str) -> URL:
        path = "/api/v2/" + "/".join(quote(segment, safe="") for segment in segments)
        return self._base.with_path(path, encoded=True)

    def _headers(self, accept: str = "application/json") -> dict[str, str]:
        return {SESSION_HEADER: self._token, "Accept": accept}

    async def _call(
        self,
        method: str,
        url: URL,
        *,
        expected: int,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> bytes:
        operation = _operation(method, url)
        status = "error"
        try:
            with self._translated(f"{method} {url.path}"):
                async with self._http().request(
                    method,
                    url,
                    json=body,
                    params=params,
                    headers=self._headers(),
                    ssl=self._ssl,
                    allow_redirects=False,
                ) as response:
                    status = str(response.status)
                    raw = await response.read()
                    if response.status == expected:
                        return raw
                    raise answers.error_for(response.status, response.headers, raw)
        finally:
            metrics.CODER_REQUESTS.labels(operation, status).inc()

    async def buildinfo(self) -> str:
        """
        Return Coder's version (``GET /api/v2/buildinfo``, no token needed): is Coder there?
        """
        raw = await self._call("GET", self._url("buildinfo"), expected=200)
        try:
            version = orjson.loads(raw).get("version", "")
        except (orjson.JSONDecodeError, AttributeError):
            version = ""
        return str(version)

    def _describe(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return text.replace(self._token, _REDACTED)

    def _cause(self, exc: BaseException) -> BaseException | None:
        """
        Return ``exc`` to chain, or None when its text or repr would show the token.
        """
        leaks = self._token in str(exc) or self._token in repr(exc)
        return None if leaks else exc

    def _translated(self, action: str) -> _Translated:
        """
        Re-raise aiohttp's errors and timeouts as the project's, without the token.
        """
        return _Translated(self, action)

    def _translate(self, action: str, exc: BaseException) -> None:
        """
        Raise the project's error for ``exc`` (raised while doing ``action``); return if none.
        """
        if isinstance(exc, CoderError):
            return
        if isinstance(
            exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | TimeoutError | OSError
        ):
            error = CoderUnavailableError(f"{action}: {self._describe(exc)}")
            raise error from self._cause(exc)
        if isinstance(exc, aiohttp.ClientError):
            raise CoderError(f"{action}: {self._describe(exc)}") from self._cause(exc)


class _Translated:
    """
    Translate what the ``with`` body raises (a class, not a generator: a watch waits in one).
    """

    __slots__ = ("_action", "_client")

    def __init__(self, client: CoderClient, action: str) -> None:
        self._client = client
        self._action = action

    def __enter__(self) -> None:
        return None

    def __exit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        if exc is not None:
            self._client._translate(self._action, exc)  # noqa: SLF001 - its own helper


def _keep_alive(sock: Any, idle_s: float) -> None:
    """
    Have the kernel probe a quiet watch connection, so a dead one fails within about 2 x idle_s.

    TCP keepalive rather than WebSocket pings: it costs no timer, task or
    wake-up per watch in this process, and Coder's own pings (every 15 s) are
    answered all the same. A Coder that goes away (host down, network cut,
    connection dropped by a middlebox) is noticed when ``idle_s`` of silence
    and three unanswered probes ``idle_s / 3`` apart have passed.
    """
    if sock is None:
        return
    options = [(socket_module.SOL_SOCKET, socket_module.SO_KEEPALIVE, 1)]
    probe_s = max(1, round(idle_s / 3))
    for name, value in (
        ("TCP_KEEPIDLE", max(1, round(idle_s))),
        ("TCP_KEEPINTVL", probe_s),
        ("TCP_KEEPCNT", 3),
    ):
        if hasattr(socket_module, name):
            options.append((socket_module.IPPROTO_TCP, getattr(socket_module, name), value))
    with contextlib.suppress(OSError):
        for level, option, value in options:
            sock.setsockopt(level, option, value)


def _operation(method: str, url: URL) -> str:
    """
    Name a call by its route, without ids: a bounded metric label.
    """
    parts = url.path.split("/")[3:]  # after /api/v2
    if parts[:1] == ["workspaces"]:
        rest = "/".join(parts[2:])
        return f"{method} workspaces/{{id}}" + (f"/{rest}" if rest else "")
    if parts[:1] == ["users"]:
        rest = "/".join(parts[2:3])
        return f"{method} users/{{user}}/{rest}"
    return f"{method} {'/'.join(parts)}"
