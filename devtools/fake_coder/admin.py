"""
Steer a running fake over HTTP: faults, agents, templates, users; read its counters.

``POST /fake/faults`` takes any of ``{"fail_next": n, "status": 500}``,
``{"throttle_next": n, "retry_after_s": 2}``, ``{"delay_next": n, "delay_s": 0.5}``,
``{"drop_watches": true}``, ``{"watch_ws": false}``, ``{"clear": true}``.
``POST /fake/workspaces/{workspace}/agent`` takes ``{"status": "connected" |
"disconnected"}`` and/or ``{"lifecycle_state": "ready"}``.
``POST /fake/templates`` takes ``{"id", "name", "forbidden"?, "known"?}``;
``POST /fake/users`` takes ``{"id", "username"}``; ``GET /fake/stats`` answers
the counters. Bad input answers 400 ``{"message": ...}``.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web

from devtools.fake_coder import wire

if TYPE_CHECKING:
    from devtools.fake_coder.server import FakeCoder


class _BadInputError(Exception):
    pass


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError as exc:
        raise _BadInputError("body must be a JSON object") from exc
    if not isinstance(body, dict):
        raise _BadInputError("body must be a JSON object")
    return body


def _uuid(value: Any, what: str) -> uuid.UUID:
    parsed, _ = wire.parse_uuid(value) if isinstance(value, str) else (None, "")
    if parsed is None:
        raise _BadInputError(f"{what} must be a UUID")
    return parsed


class AdminApi:
    """
    Serve the ``/fake`` routes over a ``FakeCoder``.
    """

    def __init__(self, fake: FakeCoder) -> None:
        self._fake = fake

    def routes(self) -> list[web.RouteDef]:
        """
        Return the admin routes.
        """
        return [
            web.post("/fake/faults", self._guard(self.faults)),
            web.post("/fake/workspaces/{workspace}/agent", self._guard(self.agent)),
            web.post("/fake/templates", self._guard(self.templates)),
            web.post("/fake/users", self._guard(self.users)),
            web.get("/fake/stats", self._guard(self.stats)),
        ]

    @staticmethod
    def _guard(handler: Any) -> Any:
        async def guarded(request: web.Request) -> web.Response:
            try:
                response: web.Response = await handler(request)
            except (_BadInputError, LookupError, ValueError, TypeError) as exc:
                return wire.write(400, {"message": str(exc)})
            return response

        return guarded

    async def faults(self, request: web.Request) -> web.Response:
        """
        Arm or clear faults; answer what was done.
        """
        body = await _body(request)
        faults, done = self._fake.faults, dict[str, Any]()
        if body.get("clear"):
            faults.clear()
            done["cleared"] = True
        if "fail_next" in body:
            faults.fail_next(int(body["fail_next"]), int(body.get("status", 500)))
        if "throttle_next" in body:
            faults.throttle_next(int(body["throttle_next"]), int(body.get("retry_after_s", 1)))
        if "delay_next" in body:
            faults.delay_next(int(body["delay_next"]), float(body.get("delay_s", 0.5)))
        if "watch_ws" in body:
            faults.watch_ws_enabled = bool(body["watch_ws"])
        if body.get("drop_watches"):
            done["dropped_watches"] = self._fake.drop_watches()
        return wire.write(200, {"ok": True, **done})

    async def agent(self, request: web.Request) -> web.Response:
        """
        Connect or disconnect the workspace's agent, or set its lifecycle state.
        """
        workspace_id = _uuid(request.match_info["workspace"], "workspace")
        body = await _body(request)
        status = body.get("status")
        if status == "connected":
            self._fake.connect_agent(workspace_id)
        elif status == "disconnected":
            self._fake.disconnect_agent(workspace_id)
        elif status is not None:
            raise _BadInputError("status must be connected or disconnected")
        if "lifecycle_state" in body:
            self._fake.set_lifecycle(workspace_id, str(body["lifecycle_state"]))
        return wire.write(200, self._fake.workspace(workspace_id))

    async def templates(self, request: web.Request) -> web.Response:
        """
        Register a template (or, with ``"known": false``, make its id unknown).
        """
        body = await _body(request)
        template_id = _uuid(body.get("id"), "id")
        if body.get("known", True) is False:
            self._fake.forget_template(template_id)
            return wire.write(200, {"id": str(template_id), "known": False})
        template = self._fake.add_template(
            template_id, str(body.get("name", "")), forbidden=bool(body.get("forbidden"))
        )
        return wire.write(200, {"id": str(template.id), "name": template.name})

    async def users(self, request: web.Request) -> web.Response:
        """
        Register a user id under a username.
        """
        body = await _body(request)
        user = self._fake.add_user(_uuid(body.get("id"), "id"), str(body.get("username", "")))
        return wire.write(200, {"id": str(user.id), "username": user.username})

    async def stats(self, _request: web.Request) -> web.Response:
        """
        Answer the counters: requests by route and status, workspaces created, watches.
        """
        counters = self._fake.counters
        requests = [
            {"method": method, "route": route, "status": status, "count": n}
            for (method, route, status), n in sorted(counters.requests.items())
        ]
        return wire.write(
            200,
            {
                "requests": requests,
                "workspaces_created": counters.workspaces_created,
                "open_watches": self._fake.open_watches,
                "watches_opened": self._fake.hub.opened,
            },
        )
