"""
Call Coder's workspace API over HTTP and watch workspaces, translating every failure.

Requests follow codersdk (coder/coder): the token goes in the
``Coder-Session-Token`` header (codersdk/client.go ``Request``, ``Dial``) and
never in a URL; a success is exactly the status codersdk expects (201 for
creates, 200 for reads); anything else is read as ``ReadBodyAsError`` reads it
and raised as one of ``coder.errors``. Redirects are not followed, so the token
never travels to another host. Nothing is retried here: ``CoderUnavailableError``
carries ``retry_after_s`` for the caller's policy.
"""

from __future__ import annotations

import contextlib
import ssl as ssl_module
import uuid
from collections.abc import AsyncGenerator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import quote

import aiohttp
from yarl import URL

from coder import answers, events, models
from coder.errors import (
    CoderError,
    CoderProtocolError,
    CoderUnavailableError,
)
from telemetry import logs

log = logs.get(__name__)

SESSION_HEADER = "Coder-Session-Token"  # codersdk/client.go SessionTokenHeader
_REDACTED = "[redacted]"
_PROTOCOL_ERROR_CLOSE = 1002  # Coder closes a one-way WebSocket with it when a client talks


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """
    Say how a watch checks that its connection lives, in seconds.

    ``heartbeat_s``: WebSocket ping interval (Coder pings every 15 s too);
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
            return
        try:
            while True:
                with self._translated("watch-ws"):
                    message = await socket.receive()
                snapshot = self._snapshot(_socket_event(message, socket), workspace_id)
                if snapshot is not None:
                    yield snapshot
        finally:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                await socket.close()

    async def _connect_watch(
        self, workspace_id: str | uuid.UUID
    ) -> aiohttp.ClientWebSocketResponse | None:
        url = self._url("workspaces", str(workspace_id), "watch-ws")
        try:
            with self._translated("watch-ws"):
                return await self._http().ws_connect(
                    url,
                    headers=self._headers(),
                    heartbeat=self._watch.heartbeat_s,
                    ssl=self._ssl,
                    timeout=aiohttp.ClientWSTimeout(ws_close=self._timeout_s),
                )
        except _Handshake as refused:
            if refused.status == 404:
                return None
            raise answers.handshake_error(refused.exc) from None

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
                if snapshot is not None:
                    yield snapshot
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
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout_s)
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
                raw = await response.read()
                if response.status == expected:
                    return raw
                raise answers.error_for(response.status, response.headers, raw)

    def _describe(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return text.replace(self._token, _REDACTED)

    def _cause(self, exc: BaseException) -> BaseException | None:
        """
        Return ``exc`` to chain, or None when its text or repr would show the token.
        """
        leaks = self._token in str(exc) or self._token in repr(exc)
        return None if leaks else exc

    @contextlib.contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        """
        Re-raise aiohttp's errors and timeouts as the project's, without the token.
        """
        try:
            yield
        except CoderError:
            raise
        except aiohttp.WSServerHandshakeError as exc:
            raise _Handshake(exc) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            error = CoderUnavailableError(f"{action}: {self._describe(exc)}")
            raise error from self._cause(exc)
        except aiohttp.ClientError as exc:
            raise CoderError(f"{action}: {self._describe(exc)}") from self._cause(exc)


class _Handshake(Exception):  # noqa: N818 - internal signal, never leaves this module
    """
    Carry a refused WebSocket upgrade out of ``_translated`` to ``_connect_watch``.
    """

    def __init__(self, exc: aiohttp.WSServerHandshakeError) -> None:
        super().__init__(exc.status)
        self.status = exc.status
        self.exc = exc


def _socket_event(
    message: aiohttp.WSMessage, socket: aiohttp.ClientWebSocketResponse
) -> events.Event:
    """
    Decode a WebSocket message, or raise the error its closing means.
    """
    if message.type is aiohttp.WSMsgType.TEXT:
        return events.from_message(message.data)
    if message.type is aiohttp.WSMsgType.BINARY:
        raise CoderProtocolError("Coder sent a binary watch message")
    code = socket.close_code
    if code == _PROTOCOL_ERROR_CLOSE:
        raise CoderProtocolError(f"Coder closed the watch: {message.extra or 'protocol error'}")
    if message.type is aiohttp.WSMsgType.ERROR:
        reason = type(message.data).__name__
        raise CoderUnavailableError(f"the watch connection failed ({reason})")
    raise CoderUnavailableError(f"Coder closed the watch (code {code})")
