"""
Serve a live, read-only web page of the state tables: ``workspaced dashboard``.

One PostgreSQL connection per server LISTENs for the NOTIFY that every
transaction writing transitions sends. A burst of them becomes one refresh
(at most one per ``min_refresh_interval_s``), and the snapshot it reads goes
to every open page over Server-Sent Events: viewers add no queries, except
when someone searches for a chat. Every query only reads, in read-only
transactions, so the server can run as a login granted ``workspaced_reader``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from types import TracebackType
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from storage import errors, store
from storage.queries import sql
from telemetry import logs

_log = logs.get(__name__)

_PAGE = "dashboard_page.html"
_NONCE = "__CSP_NONCE__"
_ROWS = 50  # stuck chats and stale agents shown; the page also shows their total
_MATCHES = 20  # chats listed for a search by the first characters of an id
_PREFIX = re.compile(r"[0-9a-f]{1,32}")
_SESSION = {
    "application_name": "workspaced-dashboard",
    "default_transaction_read_only": "on",
    "statement_timeout": "10s",
}
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Dashboard:
    """
    Run the page's HTTP server, its LISTEN connection and its refresher.

    Start it with ``async with`` (or ``start``/``close``); ``url`` is where it
    listens, ``port=0`` picks a free port.
    """

    def __init__(  # noqa: PLR0913 - tuning knobs with defaults, named at every call
        self,
        dsn: str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        min_refresh_interval_s: float = 0.25,
        tick_s: float = 10.0,
        keepalive_s: float = 15.0,
        recent: int = 30,
    ) -> None:
        self._dsn = dsn
        self._host, self._port = host, port
        self._min_refresh_interval_s = min_refresh_interval_s
        self._tick_s = tick_s
        self._keepalive_s = keepalive_s
        self._recent = recent
        self._page = resources.files("workspaced").joinpath(_PAGE).read_text()
        self._pool: Any = None
        self._listener: Any = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._viewers: set[_Viewer] = set()
        self._snapshot: bytes | None = None
        self._stale = True
        self._wake = asyncio.Event()
        self.url = ""
        self.notifications = 0  # NOTIFYs received
        self.refreshes = 0  # snapshots read and sent

    async def __aenter__(self) -> Dashboard:  # noqa: PYI034 - Dashboard is final
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """
        Connect, read a first snapshot (so a bad DSN or a missing grant fails here), and listen.
        """
        try:
            with errors.translated():
                self._pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=1,
                    max_size=3,
                    init=store.init_connection,
                    server_settings=_SESSION,
                )
            self._snapshot = _event("snapshot", await self._read_snapshot())
            self._stale = False
            self._listener = await self._connect_listener()
            self._tasks = [
                asyncio.create_task(self._listen()),
                asyncio.create_task(self._refresh_loop()),
            ]
            app = web.Application()
            app.router.add_get("/", self._index)
            app.router.add_get("/api/events", self._events)
            app.router.add_get("/api/snapshot", self._snapshot_json)
            app.router.add_get("/api/chats", self._find)
            app.router.add_get("/api/chats/{chat_id}", self._chat)
            app.on_response_prepare.append(_secure)
            self._runner = runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
            await runner.setup()
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await self.close()
            raise
        self.url = _url(runner.addresses[0])

    async def close(self) -> None:
        """
        End every event stream, stop the server and close the connections.
        """
        for viewer in list(self._viewers):
            viewer.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # -- PostgreSQL ---------------------------------------------------------

    async def _connect_listener(self) -> Any:
        with errors.translated():
            conn = await asyncpg.connect(
                self._dsn,
                server_settings=_SESSION | {"application_name": "workspaced-dashboard-listen"},
            )
            await conn.add_listener(store.OUTBOX_CHANNEL, self._notified)
        return conn

    async def _listen(self) -> None:
        """
        Keep one LISTEN connection; after a reconnect, refresh for what was missed.
        """
        while True:
            lost = _closing(self._listener)
            while await _alive(self._listener, lost, self._tick_s):
                pass
            _log.warning("dashboard_listener_lost")
            self._listener.terminate()  # nothing to say to a connection that is gone
            backoff_s = 0.5
            while True:
                await asyncio.sleep(backoff_s)  # between attempts, not polling for work
                try:
                    self._listener = await self._connect_listener()
                    break
                except errors.StorageError as exc:
                    _log.warning("dashboard_listener_failed", error=str(exc))
                    backoff_s = min(backoff_s * 2, 10.0)
            self._changed()

    def _notified(self, *_: object) -> None:
        self.notifications += 1
        self._changed()

    def _changed(self) -> None:
        self._stale = True
        if self._viewers:
            self._wake.set()

    async def _refresh_loop(self) -> None:
        """
        Read a snapshot when woken (a NOTIFY, a new viewer) or every tick while anyone watches.

        The tick keeps the time-based views (stuck chats, stale agents) current
        when nothing is written.
        """
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._tick_s)
            self._wake.clear()
            if not self._viewers:
                self._stale = True  # time moved on; the next viewer gets a fresh read
                continue
            self._stale = False
            try:
                message = _event("snapshot", await self._read_snapshot())
            except errors.StorageError as exc:
                _log.warning("dashboard_refresh_failed", error=str(exc))
                self._stale = True
                message = _event("problem", {"error": "cannot read the database; retrying"})
            except Exception:  # noqa: BLE001 - a bug in one refresh must not end all updates
                _log.exception("dashboard_refresh_failed")
                self._stale = True
                message = _event("problem", {"error": "the dashboard failed; see its log"})
            else:
                self._snapshot = message
                self.refreshes += 1
            for viewer in self._viewers:
                viewer.give(message)
            # NOTIFYs that arrive meanwhile set _wake again: one refresh for the burst.
            await asyncio.sleep(self._min_refresh_interval_s)

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[Any]:
        """
        Lend a pooled connection inside one read-only transaction: its reads agree with each other.
        """
        with errors.translated():
            async with (
                self._pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                yield conn

    async def _read_snapshot(self) -> dict[str, Any]:
        async with self._reading() as conn:
            now = await conn.fetchval("SELECT now()")
            counts = await conn.fetch(sql("dashboard_counts"))
            stuck = await conn.fetch(sql("dashboard_stuck"), _ROWS)
            durations = await conn.fetch(sql("dashboard_durations"))
            stale = await conn.fetch(sql("dashboard_stale_agents"), _ROWS)
            waiting = await conn.fetchrow(sql("dashboard_waiting_calls"))
            latest = await conn.fetch(sql("dashboard_latest"), self._recent)
        return {
            "at": now,
            "counts": [dict(r) for r in counts],
            "waiting_calls": dict(waiting),
            "stuck": _counted(stuck),
            "durations": [dict(r) for r in durations],
            "stale_agents": _counted(stale),
            "latest": [dict(r) for r in latest],
        }

    # -- HTTP ---------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.Response:
        del request
        nonce = secrets.token_urlsafe(18)
        policy = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'"
        )
        return web.Response(
            text=self._page.replace(_NONCE, nonce),
            content_type="text/html",
            headers={"Content-Security-Policy": policy},
        )

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        viewer = _Viewer()
        self._viewers.add(viewer)
        try:
            await response.write(b"retry: 2000\n\n")
            if self._snapshot is not None and not self._stale:
                viewer.give(self._snapshot)
            else:
                self._wake.set()
            while True:
                message = await viewer.next(self._keepalive_s)
                if viewer.closed:
                    break
                await response.write(message or b": keepalive\n\n")
        except ConnectionResetError:
            pass  # the page went away
        finally:
            self._viewers.discard(viewer)
        return response

    async def _snapshot_json(self, request: web.Request) -> web.Response:
        del request
        return await _answer(self._read_snapshot)

    async def _find(self, request: web.Request) -> web.Response:
        prefix = re.sub(r"[\s-]", "", request.query.get("q", "")).lower()
        if not _PREFIX.fullmatch(prefix):
            return _json({"error": "a chat id is hexadecimal digits and dashes"}, 400)
        low, high = uuid.UUID(prefix.ljust(32, "0")), uuid.UUID(prefix.ljust(32, "f"))

        async def find() -> dict[str, Any]:
            async with self._reading() as conn:
                rows = await conn.fetch(sql("dashboard_find_chats"), low, high, _MATCHES)
            return {"matches": [dict(r) for r in rows]}

        return await _answer(find)

    async def _chat(self, request: web.Request) -> web.Response:
        try:
            chat_id = uuid.UUID(request.match_info["chat_id"])
        except ValueError:
            return _json({"error": "not a chat id"}, 400)

        async def read() -> dict[str, Any] | None:
            async with self._reading() as conn:
                chat = await conn.fetchrow(sql("show_chat"), chat_id)
                calls = await conn.fetch(sql("dashboard_calls"), chat_id)
                history = await conn.fetch(sql("show_history"), chat_id)
            if chat is None:
                return None
            return {
                "chat": dict(chat),
                "calls": [dict(r) for r in calls],
                "history": [dict(r) for r in history],
            }

        return await _answer(read)


class _Viewer:
    """
    Hold the newest message for one open page: a slow page skips to the latest.
    """

    __slots__ = ("_latest", "_ready", "closed")

    def __init__(self) -> None:
        self._latest: bytes | None = None
        self._ready = asyncio.Event()
        self.closed = False

    def give(self, message: bytes) -> None:
        self._latest = message
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def next(self, timeout_s: float) -> bytes | None:
        """
        Return the newest message, or None when there was none for ``timeout_s``.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        self._ready.clear()
        message, self._latest = self._latest, None
        return message


async def serve(dsn: str, host: str, port: int, stop: asyncio.Event) -> None:
    """
    Serve the dashboard on ``host:port`` until ``stop`` is set.
    """
    async with Dashboard(dsn, host, port) as dashboard:
        _log.info("dashboard_started", url=dashboard.url)
        await stop.wait()
    _log.info("dashboard_stopped")


async def run(dsn: str, host: str, port: int) -> None:
    """
    Serve the dashboard until SIGTERM or SIGINT: what ``workspaced dashboard`` runs.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(dsn, host, port, stop)


def _closing(conn: Any) -> asyncio.Event:
    """
    Return an event set when ``conn`` closes, whoever closes it.
    """
    closed = asyncio.Event()
    conn.add_termination_listener(lambda _conn: closed.set())
    return closed


async def _alive(conn: Any, lost: asyncio.Event, every_s: float) -> bool:
    """
    Wait ``every_s`` for the connection to close, then ask it something.

    A server that vanished without closing the socket is found this way.
    """
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(lost.wait(), every_s)
    if lost.is_set():
        return False
    try:
        with errors.translated(conn):
            await conn.fetchval("SELECT 1", timeout=every_s)
    except errors.StorageError:
        return False
    return True


async def _answer(read: Callable[[], Awaitable[dict[str, Any] | None]]) -> web.Response:
    """
    Answer with what ``read`` returned: 404 for None, 503 when PostgreSQL failed.
    """
    try:
        found = await read()
    except errors.StorageError as exc:
        _log.warning("dashboard_read_failed", error=str(exc))
        return _json({"error": "cannot read the database"}, 503)
    if found is None:
        return _json({"error": "no such chat"}, 404)
    return _json(found)


def _counted(rows: list[Any]) -> dict[str, Any]:
    total = rows[0]["total"] if rows else 0
    return {"total": total, "rows": [{k: v for k, v in r.items() if k != "total"} for r in rows]}


def _event(name: str, data: Any) -> bytes:
    # orjson escapes every newline inside strings, so the data is one line.
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def _secure(request: web.Request, response: web.StreamResponse) -> None:
    del request
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def _url(address: Any) -> str:
    host, port = address[0], address[1]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
