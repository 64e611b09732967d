"""
The fake Coder speaks Coder's wire format: status codes, JSON fields and texts, over a real socket.

Expected texts are copied from coder/coder (the file is named next to each).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from devtools.fake_coder import FakeCoder, FakeCoderOptions, serve

SIGNED_OUT = "You are signed out or your session has expired. Please sign in again to continue."
FAST = FakeCoderOptions(job_step_s=0.01, agent_connect_delay_s=0.01, agent_ready_delay_s=0.01)


@pytest.fixture
async def fake() -> AsyncIterator[FakeCoder]:
    fake = FakeCoder(FAST)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


class Api:
    def __init__(self, fake: FakeCoder, http: aiohttp.ClientSession) -> None:
        self.fake, self.http = fake, http

    async def call(
        self, method: str, path: str, body: Any = None, *, token: str | None = None, **kw: Any
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = {"Coder-Session-Token": self.fake.session_token if token is None else token}
        async with self.http.request(
            method, self.fake.url + path, json=body, headers=headers, **kw
        ) as response:
            raw = await response.read()
            return response.status, (json.loads(raw) if raw else None), response

    async def create(self, name: str, owner: str = "me", **extra: Any) -> tuple[int, Any]:
        body = {"template_id": str(uuid.uuid4()), "name": name} | extra
        status, data, _ = await self.call("POST", f"/api/v2/users/{owner}/workspaces", body)
        return status, data

    async def created(self, name: str, owner: str = "me") -> dict[str, Any]:
        status, data = await self.create(name, owner)
        assert status == 201, data
        created: dict[str, Any] = data
        return created


@pytest.fixture
def api(fake: FakeCoder, http: aiohttp.ClientSession) -> Api:
    return Api(fake, http)


def latest(fake: FakeCoder, workspace: dict[str, Any]) -> dict[str, Any]:
    build: dict[str, Any] = fake.workspace(uuid.UUID(workspace["id"]))["latest_build"]
    return build


def agents(build: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for r in build["resources"] for a in r.get("agents", [])]


def agent_is(fake: FakeCoder, workspace: dict[str, Any], lifecycle: str) -> bool:
    found = agents(latest(fake, workspace))
    return bool(found) and found[0]["lifecycle_state"] == lifecycle


# --- authentication (coderd/httpmw/apikey.go) ---------------------------------


async def test_a_request_without_token_gets_coders_signed_out_401(api: Api) -> None:
    status, body, response = await api.call("GET", f"/api/v2/workspaces/{uuid.uuid4()}", token="")
    assert status == 401
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert body == {
        "message": SIGNED_OUT,
        "detail": 'Cookie "coder_session_token" or query parameter must be provided.',
    }


@pytest.mark.parametrize(
    ("token", "detail"),
    [
        ("nodash", "Invalid API key format: incorrect amount of API key parts, expected 2 got 1"),
        (
            "short-" + "s" * 22,
            "Invalid API key format: invalid API key ID length, expected 10 got 5",
        ),
        (
            "i" * 10 + "-short",
            "Invalid API key format: invalid API key secret length, expected 22 got 5",
        ),
        ("i" * 10 + "-" + "s" * 22, "API key is invalid."),
    ],
)
async def test_a_wrong_token_gets_the_detail_coder_gives(api: Api, token: str, detail: str) -> None:
    status, body, _ = await api.call("GET", f"/api/v2/workspaces/{uuid.uuid4()}", token=token)
    assert (status, body) == (401, {"message": SIGNED_OUT, "detail": detail})


async def test_a_token_with_the_right_id_and_wrong_secret_is_told_so(api: Api) -> None:
    key_id = api.fake.session_token.split("-")[0]
    status, body, _ = await api.call(
        "GET", "/api/v2/users/me/workspace/x", token=f"{key_id}-{'x' * 22}"
    )
    assert (status, body["detail"]) == (401, "API key secret is invalid.")


async def test_the_token_is_also_accepted_as_cookie_or_query_parameter(api: Api) -> None:
    path = f"/api/v2/workspaces/{uuid.uuid4()}"
    token = api.fake.session_token
    by_query, _, _ = await api.call("GET", path, token="", params={"coder_session_token": token})
    by_cookie, _, _ = await api.call("GET", path, token="", cookies={"coder_session_token": token})
    assert (by_query, by_cookie) == (404, 404)


# --- create (coderd/workspaces.go createWorkspace) ------------------------------


async def test_create_answers_201_with_a_full_workspace_and_a_pending_build(api: Api) -> None:
    status, ws = await api.create("dev-1", rich_parameter_values=[{"name": "cpu", "value": "2"}])
    assert status == 201
    assert ws["name"] == "dev-1"
    assert ws["owner_id"] == str(api.fake.world.me.id)
    assert ws["owner_name"] == "admin"
    assert ws["organization_name"] == "coder"
    assert ws["health"] == {"healthy": True, "failing_agents": []}
    build = ws["latest_build"]
    assert (build["build_number"], build["transition"], build["status"]) == (1, "start", "pending")
    assert (build["workspace_id"], build["workspace_name"]) == (ws["id"], "dev-1")
    assert build["resources"] == []
    job = build["job"]
    assert job["status"] == "pending"
    # Go's omitempty pointers are left out, not written as null.
    assert "started_at" not in job
    assert "completed_at" not in job
    assert "error" not in job
    assert api.fake.counters.workspaces_created == 1


async def test_an_owner_given_by_uuid_gets_a_derived_username_unless_registered(api: Api) -> None:
    stranger, known = uuid.uuid4(), uuid.uuid4()
    api.fake.add_user(known, "alice")
    ws = await api.created("a", owner=str(stranger))
    assert ws["owner_name"] == f"user-{stranger.hex[:8]}"
    ws = await api.created("b", owner="ALICE")
    assert (ws["owner_id"], ws["owner_name"]) == (str(known), "alice")


async def test_an_unknown_username_is_refused_as_coder_does(api: Api) -> None:
    status, body = await api.create("a", owner="nobody")
    assert status == 400
    assert body == {
        "message": '"user" must be an existing uuid or username.',
        "detail": 'queried user="nobody"',
    }


@pytest.mark.parametrize("name", ["new", "create", "", "under_score", "-lead", "x" * 33])
async def test_an_invalid_name_fails_validation_with_the_workspace_name_tag(
    api: Api, name: str
) -> None:
    status, body = await api.create(name)
    assert status == 400
    assert body == {
        "message": "Validation failed.",
        "validations": [
            {
                "field": "name",
                "detail": f'Validation failed for tag "workspace_name" with value: "{name}"',
            }
        ],
    }


async def test_the_reject_word_fails_validation_like_a_refused_name(api: Api) -> None:
    status, body = await api.create("my-reject-ws")
    assert status == 400
    assert body["validations"] == [
        {
            "field": "name",
            "detail": 'Validation failed for tag "workspace_name" with value: "my-reject-ws"',
        }
    ]


async def test_template_id_and_version_id_together_fail_excluded_with(api: Api) -> None:
    tid, tvid = uuid.uuid4(), uuid.uuid4()
    status, body = await api.create("a", template_id=str(tid), template_version_id=str(tvid))
    assert status == 400
    assert [v["field"] for v in body["validations"]] == ["template_id", "template_version_id"]
    assert (
        body["validations"][0]["detail"]
        == f'Validation failed for tag "excluded_with" with value: "{tid}"'
    )


async def test_a_body_that_is_not_json_is_refused(api: Api) -> None:
    async with api.http.post(
        api.fake.url + "/api/v2/users/me/workspaces",
        data=b"{nope",
        headers={"Coder-Session-Token": api.fake.session_token},
    ) as response:
        assert response.status == 400
        assert (await response.json())["message"] == "Request body must be valid JSON."


async def test_a_field_of_the_wrong_type_gets_gos_decoder_error(api: Api) -> None:
    status, body = await api.create("a", ttl_ms="soon")
    assert (status, body["message"]) == (400, "Request body must be valid JSON.")
    assert body["detail"] == (
        "json: cannot unmarshal string into Go struct field CreateWorkspaceRequest.ttl_ms of type int64"
    )


async def test_an_unknown_template_is_a_400_naming_it(api: Api) -> None:
    template_id = uuid.uuid4()
    api.fake.forget_template(template_id)
    status, body = await api.create("a", template_id=str(template_id))
    assert status == 400
    assert body == {
        "message": f'Template "{template_id}" doesn\'t exist.',
        "validations": [{"field": "template_id", "detail": "template not found"}],
    }


async def test_a_forbidden_template_is_a_403(api: Api) -> None:
    template_id = uuid.uuid4()
    api.fake.add_template(template_id, "secret-tpl", forbidden=True)
    status, body = await api.create("a", template_id=str(template_id))
    assert (status, body["message"]) == (
        403,
        'Unauthorized access to use the template "secret-tpl".',
    )


async def test_a_ttl_under_a_minute_is_refused(api: Api) -> None:
    status, body = await api.create("a", ttl_ms=59_000)
    assert status == 400
    assert body == {
        "message": "Invalid Workspace Time to Shutdown.",
        "validations": [
            {"field": "ttl_ms", "detail": "time until shutdown must be at least one minute"}
        ],
    }


async def test_an_existing_name_conflicts_case_insensitively_until_deleted(api: Api) -> None:
    ws = await api.created("dev")
    status, body = await api.create("DEV")
    assert status == 409
    assert body == {
        "message": 'Workspace "DEV" already exists.',
        "validations": [
            {"field": "name", "detail": "This value is already in use and should be unique."}
        ],
    }
    await api.fake.wait_until(lambda: latest(api.fake, ws)["job"]["status"] == "succeeded")
    status, _, _ = await api.call(
        "POST", f"/api/v2/workspaces/{ws['id']}/builds", {"transition": "delete"}
    )
    assert status == 201
    await api.fake.wait_until(lambda: latest(api.fake, ws)["status"] == "deleted")
    status, _ = await api.create("dev")
    assert status == 201


async def test_html_characters_are_escaped_as_gos_encoder_does(api: Api) -> None:
    template_id = uuid.uuid4()
    api.fake.add_template(template_id, "<b>&")
    async with api.http.post(
        api.fake.url + "/api/v2/users/me/workspaces",
        json={"template_id": str(template_id), "name": "a"},
        headers={"Coder-Session-Token": api.fake.session_token},
    ) as response:
        raw = await response.text()
    assert '"template_name":"\\u003cb\\u003e\\u0026"' in raw
    assert raw.endswith("}\n")


# --- builds and forced outcomes (provisioner, wsbuilder) ---------------------


async def test_a_start_build_goes_pending_running_succeeded_and_its_agent_gets_ready(
    api: Api,
) -> None:
    ws = await api.created("dev")
    await api.fake.wait_until(lambda: agent_is(api.fake, ws, "ready"))
    build = latest(api.fake, ws)
    assert build["status"] == "running"
    assert {"started_at", "completed_at", "worker_id"} <= build["job"].keys()
    agent = agents(build)[0]
    assert agent["status"] == "connected"
    assert {"first_connected_at", "last_connected_at", "ready_at"} <= agent.keys()
    assert agent["health"] == {"healthy": True}


async def test_the_fail_word_fails_the_job_with_an_error(api: Api) -> None:
    ws = await api.created("will-fail")
    await api.fake.wait_until(lambda: latest(api.fake, ws)["job"]["status"] == "failed")
    build = latest(api.fake, ws)
    assert (build["status"], build["job"]["error"]) == ("failed", "terraform apply: exit status 1")
    assert build["resources"] == []


async def test_the_noagent_word_builds_a_resource_without_agents(api: Api) -> None:
    ws = await api.created("noagent")
    await api.fake.wait_until(lambda: latest(api.fake, ws)["status"] == "running")
    resources = latest(api.fake, ws)["resources"]
    assert len(resources) == 1
    assert "agents" not in resources[0]


async def test_the_lost_word_leaves_the_agent_connecting_until_it_times_out(
    http: aiohttp.ClientSession,
) -> None:
    fake = FakeCoder(FakeCoderOptions(job_step_s=0.01, agent_connection_timeout_s=0))
    await fake.start()
    try:
        ws = await Api(fake, http).created("lost-one")
        await fake.wait_until(lambda: bool(agents(latest(fake, ws))))
        await fake.wait_until(lambda: agents(latest(fake, ws))[0]["status"] == "timeout")
        agent = agents(latest(fake, ws))[0]
        assert "first_connected_at" not in agent
        assert agent["health"] == {
            "healthy": False,
            "reason": "agent is taking too long to connect",
        }
        assert fake.workspace(uuid.UUID(ws["id"]))["health"]["failing_agents"] == [agent["id"]]
    finally:
        await fake.stop()


async def test_startfail_ends_in_start_error_and_slowstart_stays_starting(api: Api) -> None:
    failing, slow, normal = [await api.created(n) for n in ("startfail", "slowstart", "normal")]
    await api.fake.wait_until(lambda: agent_is(api.fake, failing, "start_error"))
    await api.fake.wait_until(lambda: agent_is(api.fake, normal, "ready"))
    assert agents(latest(api.fake, failing))[0]["health"] == {
        "healthy": False,
        "reason": "agent startup script exited with an error",
    }
    assert agent_is(api.fake, slow, "starting")


async def test_the_stuck_word_leaves_the_job_pending(api: Api) -> None:
    stuck, normal = await api.created("stuck"), await api.created("normal")
    await api.fake.wait_until(lambda: latest(api.fake, normal)["job"]["status"] == "succeeded")
    assert latest(api.fake, stuck)["job"]["status"] == "pending"


async def test_a_second_build_while_one_is_active_conflicts(api: Api) -> None:
    ws = await api.created("stuck")
    status, body, _ = await api.call(
        "POST", f"/api/v2/workspaces/{ws['id']}/builds", {"transition": "stop"}
    )
    assert (status, body) == (
        409,
        {
            "message": "A workspace build is already active.",
            "detail": "A workspace build is already active.",
        },
    )


async def test_an_unknown_transition_fails_the_oneof_tag(api: Api) -> None:
    ws = await api.created("dev")
    status, body, _ = await api.call(
        "POST", f"/api/v2/workspaces/{ws['id']}/builds", {"transition": "restart"}
    )
    assert status == 400
    assert body["validations"] == [
        {"field": "transition", "detail": 'Validation failed for tag "oneof" with value: "restart"'}
    ]


async def test_a_stop_build_answers_201_and_leaves_no_agents(api: Api) -> None:
    ws = await api.created("dev")
    await api.fake.wait_until(lambda: agent_is(api.fake, ws, "ready"))
    status, build, _ = await api.call(
        "POST", f"/api/v2/workspaces/{ws['id']}/builds", {"transition": "stop"}
    )
    assert status == 201
    assert (build["build_number"], build["transition"], build["status"]) == (2, "stop", "pending")
    await api.fake.wait_until(lambda: latest(api.fake, ws)["status"] == "stopped")
    assert agents(latest(api.fake, ws)) == []


# --- reads (workspace, workspaceByOwnerAndName) -------------------------------


async def test_a_deleted_workspace_is_gone_unless_include_deleted(api: Api) -> None:
    ws = await api.created("dev")
    await api.fake.wait_until(lambda: latest(api.fake, ws)["job"]["status"] == "succeeded")
    await api.call("POST", f"/api/v2/workspaces/{ws['id']}/builds", {"transition": "delete"})
    await api.fake.wait_until(lambda: latest(api.fake, ws)["status"] == "deleted")
    status, body, _ = await api.call("GET", f"/api/v2/workspaces/{ws['id']}")
    assert status == 410
    assert body == {
        "message": f'Workspace "{ws["id"]}" was deleted, you can view this workspace by '
        "specifying '?deleted=true' and trying again."
    }
    status, body, _ = await api.call(
        "GET", f"/api/v2/workspaces/{ws['id']}", params={"include_deleted": "true"}
    )
    assert (status, body["latest_build"]["status"]) == (200, "deleted")
    status, _, _ = await api.call("GET", "/api/v2/users/me/workspace/dev")
    assert status == 404
    status, body, _ = await api.call(
        "GET", "/api/v2/users/me/workspace/dev", params={"include_deleted": "true"}
    )
    assert (status, body["id"]) == (200, ws["id"])


async def test_reads_refuse_bad_ids_and_bad_booleans_and_unknown_ids(api: Api) -> None:
    status, body, _ = await api.call("GET", "/api/v2/workspaces/xyz")
    assert (status, body) == (
        400,
        {"message": 'Invalid UUID "xyz".', "detail": "invalid UUID length: 3"},
    )
    status, body, _ = await api.call("GET", f"/api/v2/workspaces/{uuid.uuid4()}")
    assert (status, body) == (
        404,
        {"message": "Resource not found or you do not have access to this resource"},
    )
    ws = await api.created("dev")
    status, body, _ = await api.call(
        "GET", f"/api/v2/workspaces/{ws['id']}", params={"include_deleted": "maybe"}
    )
    assert status == 400
    assert body == {
        "message": 'Invalid boolean value "maybe" for "include_deleted" query param.',
        "validations": [{"field": "deleted", "detail": "Must be a valid boolean"}],
    }


async def test_by_owner_and_name_is_case_insensitive(api: Api) -> None:
    ws = await api.created("Dev-Box")
    status, body, _ = await api.call("GET", "/api/v2/users/admin/workspace/dev-box")
    assert (status, body["id"]) == (200, ws["id"])


async def test_an_unknown_route_is_coders_route_not_found(api: Api) -> None:
    status, body, _ = await api.call("GET", "/api/v2/nothing-here")
    assert (status, body) == (404, {"message": "Route not found."})


# --- watches (watchWorkspace, OneWayWebSocketEventSender, ServerSentEventSender) --


async def test_watch_ws_sends_ping_then_data_then_every_change(api: Api) -> None:
    ws = await api.created("dev")
    seen: list[str] = []
    headers = {"Coder-Session-Token": api.fake.session_token}
    async with api.http.ws_connect(
        f"{api.fake.url}/api/v2/workspaces/{ws['id']}/watch-ws", headers=headers
    ) as sock:
        first = json.loads((await sock.receive(timeout=5)).data)
        assert first == {"type": "ping", "data": None}
        while not seen or seen[-1] != "ready":
            event = json.loads((await sock.receive(timeout=5)).data)
            assert event["type"] == "data"
            assert event["data"]["id"] == ws["id"]
            found = agents(event["data"]["latest_build"])
            seen.append(
                found[0]["lifecycle_state"] if found else event["data"]["latest_build"]["status"]
            )
    assert seen[:3] == ["pending", "starting", "created"]
    assert seen[-2:] == ["starting", "ready"]


async def test_watch_ws_closes_with_1002_when_the_client_talks(api: Api) -> None:
    ws = await api.created("dev")
    headers = {"Coder-Session-Token": api.fake.session_token}
    async with api.http.ws_connect(
        f"{api.fake.url}/api/v2/workspaces/{ws['id']}/watch-ws", headers=headers
    ) as sock:
        await sock.receive(timeout=5)
        await sock.send_str("hello")
        while (message := await sock.receive(timeout=5)).type is aiohttp.WSMsgType.TEXT:
            pass
        assert message.type is aiohttp.WSMsgType.CLOSE
        assert (message.data, message.extra) == (
            1002,
            "Clients cannot send messages for one-way WebSockets",
        )


async def test_watch_sse_writes_coders_event_lines(api: Api) -> None:
    ws = await api.created("stuck")
    headers = {"Coder-Session-Token": api.fake.session_token}
    async with api.http.get(
        f"{api.fake.url}/api/v2/workspaces/{ws['id']}/watch", headers=headers
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-cache"
        assert await response.content.readuntil(b"\n\n") == b"event: ping\n\n"
        data = await response.content.readuntil(b"\n\n")
    assert data.startswith(b"event: data\ndata: {")
    assert data.endswith(b"}\n\n")
    assert json.loads(data.removeprefix(b"event: data\ndata: "))["id"] == ws["id"]


async def test_watch_ws_can_be_switched_off_like_an_older_coder(api: Api) -> None:
    ws = await api.created("dev")
    api.fake.faults.watch_ws_enabled = False
    status, body, _ = await api.call("GET", f"/api/v2/workspaces/{ws['id']}/watch-ws")
    assert (status, body) == (404, {"message": "Route not found."})


async def test_dropping_watches_cuts_the_connections(api: Api) -> None:
    ws = await api.created("stuck")
    headers = {"Coder-Session-Token": api.fake.session_token}
    async with api.http.ws_connect(
        f"{api.fake.url}/api/v2/workspaces/{ws['id']}/watch-ws", headers=headers
    ) as sock:
        await sock.receive(timeout=5)
        await sock.receive(timeout=5)
        assert api.fake.drop_watches() == 1
        message = await sock.receive(timeout=5)
    assert message.type in {
        aiohttp.WSMsgType.CLOSED,
        aiohttp.WSMsgType.ERROR,
        aiohttp.WSMsgType.CLOSE,
    }
    await api.fake.wait_until(lambda: api.fake.open_watches == 0)


# --- agents, faults and counters ----------------------------------------------


async def test_agents_can_be_disconnected_reconnected_and_moved_through_lifecycles(
    api: Api,
) -> None:
    ws = await api.created("dev")
    await api.fake.wait_until(lambda: agent_is(api.fake, ws, "ready"))
    workspace_id = uuid.UUID(ws["id"])
    api.fake.disconnect_agent(workspace_id)
    agent = agents(latest(api.fake, ws))[0]
    assert (agent["status"], agent["health"]["reason"]) == (
        "disconnected",
        "agent has lost connection",
    )
    api.fake.connect_agent(workspace_id)
    api.fake.set_lifecycle(workspace_id, "shutting_down")
    agent = agents(latest(api.fake, ws))[0]
    assert (agent["status"], agent["health"]) == (
        "connected",
        {"healthy": False, "reason": "agent is shutting down"},
    )


async def test_injected_failures_answer_500_then_429_and_then_normally(api: Api) -> None:
    api.fake.faults.fail_next(1)
    api.fake.faults.throttle_next(1, retry_after_s=7)
    status, body = await api.create("a")
    assert (status, body) == (
        500,
        {"message": "An internal server error occurred.", "detail": "fake coder: injected fault"},
    )
    status, body, response = await api.call("POST", "/api/v2/users/me/workspaces", {"name": "a"})
    assert status == 429
    assert response.headers["Retry-After"] == "7"
    assert body == {
        "message": "You've been rate limited for sending more than 512 requests in 1m0s."
    }
    status, _ = await api.create("a")
    assert status == 201


async def test_the_admin_routes_arm_faults_move_agents_and_count(api: Api) -> None:
    ws = await api.created("dev")
    await api.fake.wait_until(lambda: agent_is(api.fake, ws, "ready"))
    async with api.http.post(
        api.fake.url + "/fake/faults", json={"fail_next": 1, "status": 503}
    ) as response:
        assert response.status == 200
    status, _, _ = await api.call("GET", f"/api/v2/workspaces/{ws['id']}")
    assert status == 503
    async with api.http.post(
        f"{api.fake.url}/fake/workspaces/{ws['id']}/agent", json={"status": "disconnected"}
    ) as response:
        assert agents((await response.json())["latest_build"])[0]["status"] == "disconnected"
    async with api.http.get(api.fake.url + "/fake/stats") as response:
        stats = await response.json()
    assert stats["workspaces_created"] == 1
    assert {
        "method": "GET",
        "route": "/api/v2/workspaces/{workspace}",
        "status": 503,
        "count": 1,
    } in stats["requests"]
    assert api.fake.counters.count("POST", "/api/v2/users/{user}/workspaces", 201) == 1


async def test_serve_runs_until_its_stop_event_is_set(http: aiohttp.ClientSession) -> None:
    stop = asyncio.Event()
    url: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    token = "ServeTokn0-" + "s" * 22
    task = asyncio.create_task(serve("127.0.0.1", 0, token, stop, started=url.set_result))
    base = await asyncio.wait_for(url, 10)
    async with http.get(
        f"{base}/api/v2/users/me/workspace/none", headers={"Coder-Session-Token": token}
    ) as response:
        assert response.status == 404
    stop.set()
    await asyncio.wait_for(task, 10)
    with pytest.raises(aiohttp.ClientConnectionError):
        await http.get(f"{base}/api/v2/users/me/workspace/none")
