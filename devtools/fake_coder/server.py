"""
Run the fake Coder: Coder's routes behind its auth, plus fault injection, counters and admin routes.

Admin routes (no token needed, never faulted) let another process steer a
running fake: ``POST /fake/faults``, ``POST /fake/workspaces/{workspace}/agent``,
``POST /fake/templates``, ``POST /fake/users`` and ``GET /fake/stats``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from devtools.fake_coder import render, session, wire
from devtools.fake_coder.admin import AdminApi
from devtools.fake_coder.api import CoderApi
from devtools.fake_coder.faults import Faults
from devtools.fake_coder.provisioner import Provisioner, Timing
from devtools.fake_coder.state import Agent, Template, User, Workspace, World, derive, now
from devtools.fake_coder.watch import WatchHub
from telemetry import logs

log = logs.get(__name__)
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_LIFECYCLES = frozenset(
    {
        "created",
        "starting",
        "start_timeout",
        "start_error",
        "ready",
        "shutting_down",
        "shutdown_timeout",
        "shutdown_error",
        "off",
    }
)


@dataclass(frozen=True, slots=True)
class FakeCoderOptions:
    """
    Configure a fake Coder; delays in seconds. A ``None`` token is generated in Coder's shape.
    """

    session_token: str | None = None
    username: str = "admin"
    user_id: uuid.UUID = field(default_factory=lambda: derive("user", "admin"))
    organization_name: str = "coder"
    job_step_s: float = 0.05
    agent_connect_delay_s: float = 0.05
    agent_ready_delay_s: float = 0.05
    agent_connection_timeout_s: int = 120
    heartbeat_s: float = 15.0
    accept_any_template: bool = True
    watch_ws: bool = True


@dataclass(slots=True)
class Counters:
    """
    Count answered requests by method, route template and status, and workspaces created.
    """

    requests: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    workspaces_created: int = 0

    def count(self, method: str, route: str, status: int | None = None) -> int:
        """
        Return how many ``method route`` requests were answered (with ``status``, if given).
        """
        return sum(
            n
            for (m, r, s), n in self.requests.items()
            if m == method and r == route and status in {None, s}
        )


class FakeCoder:
    """
    Serve Coder's workspace API from memory on a real socket, for tests and demos.
    """

    def __init__(self, options: FakeCoderOptions | None = None) -> None:
        self.options = options or FakeCoderOptions()
        self.session_token = self.options.session_token or session.generate()
        me = User(self.options.user_id, self.options.username)
        org_id = derive("organization", self.options.organization_name)
        self.world = World(me, org_id, self.options.organization_name)
        self.world.accept_any_template = self.options.accept_any_template
        self.faults = Faults()
        self.faults.watch_ws_enabled = self.options.watch_ws
        self.counters = Counters()
        timing = Timing(
            self.options.job_step_s,
            self.options.agent_connect_delay_s,
            self.options.agent_ready_delay_s,
            self.options.agent_connection_timeout_s,
        )
        self.provisioner = Provisioner(self.world, timing)
        self.hub = WatchHub(
            self.world, self.options.heartbeat_s, lambda: self.faults.watch_ws_enabled
        )
        self._api = CoderApi(self.world, self.provisioner, self._created)
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self.url = ""

    def _created(self) -> None:
        self.counters.workspaces_created += 1

    def app(self) -> web.Application:
        """
        Build the aiohttp application (middlewares outermost first: count, faults, auth).
        """
        app = web.Application(middlewares=[self._count, self._inject_faults, self._authenticate])
        app.add_routes(self._api.routes())
        app.add_routes(self.hub.routes())
        app.add_routes(AdminApi(self).routes())
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """
        Listen on ``host:port`` (0 picks a free port) and return the base URL.
        """
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"http://{shown}:{bound_port}"
        return self.url

    async def stop(self) -> None:
        """
        End every watch, stop the builds in flight and close the listening socket.
        """
        self._stopping.set()
        self.hub.close_all()
        await self.provisioner.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- steering from Python -------------------------------------------------

    def add_user(self, user_id: uuid.UUID, username: str) -> User:
        """
        Register a user, so ``{user}`` can be given by that username.
        """
        return self.world.add_user(user_id, username)

    def add_template(
        self, template_id: uuid.UUID, name: str, *, forbidden: bool = False
    ) -> Template:
        """
        Register a template by name; ``forbidden`` makes create answer Coder's 403.
        """
        return self.world.add_template(template_id, name, forbidden=forbidden)

    def forget_template(self, template_id: uuid.UUID) -> None:
        """
        Make ``template_id`` unknown, so create answers Coder's 400 "Template ... doesn't exist."
        """
        self.world.templates.pop(template_id, None)
        self.world.unknown_templates.add(template_id)

    def workspace(self, workspace_id: uuid.UUID) -> dict[str, Any]:
        """
        Return the workspace as Coder's JSON, deleted or not; KeyError when unknown.
        """
        return render.workspace_json(self.world, self.world.workspaces[workspace_id])

    def _agent(self, workspace_id: uuid.UUID) -> tuple[Workspace, Agent]:
        workspace = self.world.workspaces[workspace_id]
        agents = workspace.latest_build.agents
        if not agents:
            raise LookupError(f"workspace {workspace_id} has no agent in its latest build")
        return workspace, agents[0]

    def disconnect_agent(self, workspace_id: uuid.UUID) -> None:
        """
        Mark the workspace's agent ``disconnected``, as when its heartbeats stop.
        """
        workspace, agent = self._agent(workspace_id)
        agent.status = "disconnected"
        agent.disconnected_at = agent.updated_at = now()
        self.world.touch(workspace)

    def connect_agent(self, workspace_id: uuid.UUID) -> None:
        """
        Mark the workspace's agent ``connected`` now.
        """
        workspace, agent = self._agent(workspace_id)
        moment = now()
        agent.status = "connected"
        agent.first_connected_at = agent.first_connected_at or moment
        agent.last_connected_at = agent.updated_at = moment
        self.world.touch(workspace)

    def set_lifecycle(self, workspace_id: uuid.UUID, state: str) -> None:
        """
        Set the agent's ``lifecycle_state`` (one of Coder's ``WorkspaceAgentLifecycle`` values).
        """
        if state not in _LIFECYCLES:
            raise ValueError(f"unknown lifecycle state {state!r}")
        workspace, agent = self._agent(workspace_id)
        agent.lifecycle_state, agent.updated_at = state, now()
        if state == "ready":
            agent.ready_at = agent.updated_at
        self.world.touch(workspace)

    def drop_watches(self) -> int:
        """
        Cut every open watch connection abruptly; return how many there were.
        """
        return self.hub.drop_all()

    @property
    def open_watches(self) -> int:
        """
        Return how many watches are open now.
        """
        return len(self.hub.watchers)

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
        """
        Wait until ``predicate()`` holds, re-checking on every change and answered request.
        """
        await self.world.wait_until(predicate, timeout_s)

    # --- middlewares ------------------------------------------------------------

    @web.middleware
    async def _count(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPMethodNotAllowed:
            response = web.Response(status=405)  # chi's default: status only
        except web.HTTPNotFound:
            response = wire.respond(404, wire.ROUTE_NOT_FOUND)
        except web.HTTPException:
            raise
        except Exception as exc:  # the fake answers as Coder would, never crashes
            log.exception("fake_coder_handler_failed", path=request.path)
            response = wire.respond(500, wire.INTERNAL_ERROR, detail=type(exc).__name__)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "<unmatched>"
        self.counters.requests[request.method, route, response.status] += 1
        self.world.notify()
        return response

    @web.middleware
    async def _inject_faults(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        if request.path.startswith("/api/"):
            delay_s = self.faults.take_delay()
            if delay_s:
                # A slow answer, cut short when the fake stops so shutdown never waits on it.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay_s)
            failure = self.faults.take_failure()
            if failure is not None:
                return failure.response()
        return await handler(request)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        if request.match_info.http_exception is not None:
            raise request.match_info.http_exception
        # Coder serves its build info without a token.
        if request.path.startswith("/api/") and request.path != "/api/v2/buildinfo":
            refused = session.check(request, self.session_token)
            if refused is not None:
                return refused
        return await handler(request)


async def serve(
    host: str,
    port: int,
    token: str,
    stop_event: asyncio.Event,
    *,
    started: Callable[[str], None] | None = None,
) -> None:
    """
    Run a fake Coder on ``host:port`` accepting ``token`` until ``stop_event`` is set.

    This is what a command line calls. ``started`` is told the base URL once
    the socket listens; the token is never logged.
    """
    fake = FakeCoder(FakeCoderOptions(session_token=token))
    url = await fake.start(host, port)
    log.info("fake_coder_started", url=url)
    if started is not None:
        started(url)
    try:
        await stop_event.wait()
    finally:
        await fake.stop()
        log.info("fake_coder_stopped", url=url)
