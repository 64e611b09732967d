"""
The Coder client, against the fake Coder over real sockets: answers, errors, watches, secrecy.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from aiohttp import web

from coder import models
from coder.answers import retry_after_s
from coder.client import CoderClient, WatchSettings
from coder.errors import (
    CoderError,
    CoderProtocolError,
    CoderRejectedError,
    CoderUnavailableError,
    Validation,
    WorkspaceGoneError,
)
from devtools.fake_coder import FakeCoder, FakeCoderOptions

SIGNED_OUT = "You are signed out or your session has expired. Please sign in again to continue."
TOKEN = "Sekr3tId00-Sekr3tSecretSecretSecret0"  # noqa: S105 - a test token in Coder's 10-22 shape


def options(**overrides: object) -> FakeCoderOptions:
    values: dict[str, object] = {
        "session_token": TOKEN,
        "job_step_s": 0.01,
        "agent_connect_delay_s": 0.01,
        "agent_ready_delay_s": 0.01,
    } | overrides
    return FakeCoderOptions(**values)  # type: ignore[arg-type]


@pytest.fixture
async def fake() -> AsyncIterator[FakeCoder]:
    fake = FakeCoder(options())
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def client(fake: FakeCoder) -> AsyncIterator[CoderClient]:
    async with CoderClient(fake.url, TOKEN, timeout_s=5) as client:
        yield client


async def watch_until(
    client: CoderClient, workspace_id: uuid.UUID, done: Callable[[models.Workspace], bool]
) -> list[models.Workspace]:
    seen: list[models.Workspace] = []
    async with contextlib.aclosing(client.watch(workspace_id)) as snapshots:
        async for snapshot in snapshots:
            seen.append(snapshot)
            if done(snapshot):
                return seen
    raise AssertionError("the watch ended")


def agent_ready(workspace: models.Workspace) -> bool:
    agents = workspace.latest_build.agents
    return bool(agents) and agents[0].lifecycle_state is models.AgentLifecycle.READY


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# --- answers -----------------------------------------------------------------


async def test_create_workspace_returns_the_workspace_with_a_pending_start_build(
    client: CoderClient, fake: FakeCoder
) -> None:
    template_id = uuid.uuid4()
    ws = await client.create_workspace("me", template_id, "dev-1", {"cpu": "2"})
    assert (ws.name, ws.owner_id, ws.owner_name, ws.template_id) == (
        "dev-1",
        fake.world.me.id,
        "admin",
        template_id,
    )
    build = ws.latest_build
    assert (build.build_number, build.transition, build.status) == (
        1,
        models.Transition.START,
        models.BuildStatus.PENDING,
    )
    assert build.job.status is models.JobStatus.PENDING
    assert build.job.status.active
    assert (build.job.started_at, build.job.completed_at, build.job.error) == (None, None, "")
    assert build.agents == ()
    assert not ws.deleted


async def test_a_workspace_can_be_read_by_id_and_by_owner_and_name(
    client: CoderClient, fake: FakeCoder
) -> None:
    owner = uuid.uuid4()
    fake.add_user(owner, "alice")
    created = await client.create_workspace(owner, uuid.uuid4(), "dev")
    assert (await client.workspace(created.id)).id == created.id
    assert (await client.workspace(str(created.id))).owner_name == "alice"
    assert (await client.workspace_by_owner_and_name("alice", "DEV")).id == created.id
    assert (await client.workspace_by_owner_and_name(owner, "dev")).id == created.id


async def test_create_build_returns_the_queued_build(client: CoderClient) -> None:
    ws = await client.create_workspace("me", uuid.uuid4(), "dev")
    await watch_until(client, ws.id, agent_ready)
    build = await client.create_build(ws.id, models.Transition.STOP)
    assert (build.workspace_id, build.build_number, build.transition, build.status) == (
        ws.id,
        2,
        models.Transition.STOP,
        models.BuildStatus.PENDING,
    )
    stopped = await watch_until(
        client, ws.id, lambda w: w.latest_build.status is models.BuildStatus.STOPPED
    )
    assert stopped[-1].latest_build.agents == ()


# --- refusals ------------------------------------------------------------------


async def test_an_invalid_name_is_rejected_with_coders_validations(client: CoderClient) -> None:
    with pytest.raises(CoderRejectedError) as caught:
        await client.create_workspace("me", uuid.uuid4(), "not_valid")
    error = caught.value
    assert (error.status_code, error.message, error.detail) == (400, "Validation failed.", "")
    assert error.validations == (
        Validation("name", 'Validation failed for tag "workspace_name" with value: "not_valid"'),
    )


async def test_an_unknown_template_is_rejected(client: CoderClient, fake: FakeCoder) -> None:
    template_id = uuid.uuid4()
    fake.forget_template(template_id)
    with pytest.raises(CoderRejectedError) as caught:
        await client.create_workspace("me", template_id, "dev")
    assert caught.value.status_code == 400
    assert caught.value.message == f'Template "{template_id}" doesn\'t exist.'
    assert caught.value.validations == (Validation("template_id", "template not found"),)


async def test_an_existing_name_is_a_409_conflict(client: CoderClient) -> None:
    await client.create_workspace("me", uuid.uuid4(), "dev")
    with pytest.raises(CoderRejectedError) as caught:
        await client.create_workspace("me", uuid.uuid4(), "Dev")
    assert (caught.value.status_code, caught.value.message) == (
        409,
        'Workspace "Dev" already exists.',
    )
    assert caught.value.validations == (
        Validation("name", "This value is already in use and should be unique."),
    )


async def test_a_second_build_while_one_is_active_is_a_409(client: CoderClient) -> None:
    ws = await client.create_workspace("me", uuid.uuid4(), "stuck")
    with pytest.raises(CoderRejectedError) as caught:
        await client.create_build(ws.id, "stop")
    assert (caught.value.status_code, caught.value.message) == (
        409,
        "A workspace build is already active.",
    )


async def test_a_wrong_token_is_a_401_with_coders_message(fake: FakeCoder) -> None:
    async with CoderClient(fake.url, "WrongIdXYZ-" + "s" * 22, timeout_s=5) as client:
        with pytest.raises(CoderRejectedError) as caught:
            await client.workspace(uuid.uuid4())
    assert (caught.value.status_code, caught.value.message, caught.value.detail) == (
        401,
        SIGNED_OUT,
        "API key is invalid.",
    )


async def test_an_unknown_workspace_is_a_404(client: CoderClient) -> None:
    with pytest.raises(CoderRejectedError) as caught:
        await client.workspace(uuid.uuid4())
    assert caught.value.status_code == 404
    assert not isinstance(caught.value, WorkspaceGoneError)


async def test_a_deleted_workspace_is_gone_but_readable_with_include_deleted(
    client: CoderClient,
) -> None:
    ws = await client.create_workspace("me", uuid.uuid4(), "dev")
    await watch_until(client, ws.id, lambda w: not w.latest_build.job.status.active)
    await client.create_build(ws.id, models.Transition.DELETE)
    await watch_until(client, ws.id, lambda w: w.deleted)
    with pytest.raises(WorkspaceGoneError) as caught:
        await client.workspace(ws.id)
    assert caught.value.status_code == 410
    assert caught.value.message.startswith(f'Workspace "{ws.id}" was deleted')
    deleted = await client.workspace(ws.id, include_deleted=True)
    assert deleted.deleted
    assert deleted.latest_build.status is models.BuildStatus.DELETED


# --- unavailability --------------------------------------------------------------


async def test_a_429_is_unavailable_with_coders_retry_after(
    client: CoderClient, fake: FakeCoder
) -> None:
    fake.faults.throttle_next(1, retry_after_s=7)
    with pytest.raises(CoderUnavailableError) as caught:
        await client.create_workspace("me", uuid.uuid4(), "dev")
    assert (caught.value.status_code, caught.value.retry_after_s) == (429, 7.0)
    assert caught.value.message.startswith("You've been rate limited")


async def test_a_500_is_unavailable_and_the_next_call_succeeds(
    client: CoderClient, fake: FakeCoder
) -> None:
    fake.faults.fail_next(1)
    with pytest.raises(CoderUnavailableError) as caught:
        await client.create_workspace("me", uuid.uuid4(), "dev")
    assert (caught.value.status_code, caught.value.message, caught.value.retry_after_s) == (
        500,
        "An internal server error occurred.",
        None,
    )
    assert (await client.create_workspace("me", uuid.uuid4(), "dev")).name == "dev"


async def test_a_refused_connection_is_unavailable() -> None:
    async with CoderClient(f"http://127.0.0.1:{free_port()}", TOKEN, timeout_s=5) as client:
        with pytest.raises(CoderUnavailableError) as caught:
            await client.workspace(uuid.uuid4())
    assert caught.value.status_code is None
    assert "ClientConnectorError" in str(caught.value)


async def test_a_slow_answer_times_out_as_unavailable(fake: FakeCoder) -> None:
    fake.faults.delay_next(1, delay_s=1.0)
    async with CoderClient(fake.url, TOKEN, timeout_s=0.2) as client:
        with pytest.raises(CoderUnavailableError) as caught:
            await client.workspace(uuid.uuid4())
    assert "Timeout" in str(caught.value)


async def test_a_proxy_page_instead_of_json_is_read_as_coder_reads_it() -> None:
    async def bad_gateway(_request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>bad gateway</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/api/v2/workspaces/{id}", bad_gateway)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with CoderClient(f"http://{host}:{port}", TOKEN, timeout_s=5) as client:
            with pytest.raises(CoderUnavailableError) as caught:
                await client.workspace(uuid.uuid4())
    finally:
        await runner.cleanup()
    assert caught.value.status_code == 502
    assert caught.value.message == "unexpected non-JSON response 'text/html; charset=utf-8'"
    assert caught.value.detail == "<html>bad gateway</html>"


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_s("3") == 3.0
    assert retry_after_s(None) is None
    assert retry_after_s("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    seconds = retry_after_s(later)
    assert seconds is not None
    assert 100 < seconds <= 120


# --- watches ---------------------------------------------------------------------


async def test_watch_ws_follows_a_build_until_the_agent_is_ready(
    client: CoderClient, fake: FakeCoder
) -> None:
    ws = await client.create_workspace("me", uuid.uuid4(), "dev")
    seen = await watch_until(client, ws.id, agent_ready)
    statuses = [s.latest_build.status for s in seen]
    assert statuses[0] is models.BuildStatus.PENDING
    assert models.BuildStatus.STARTING in statuses
    assert statuses[-1] is models.BuildStatus.RUNNING
    agent = seen[-1].latest_build.agents[0]
    assert agent.status is models.AgentStatus.CONNECTED
    assert agent.first_connected_at is not None
    assert agent.ready_at is not None
    assert fake.counters.count("GET", "/api/v2/workspaces/{workspace}/watch-ws", 101) == 1
    assert fake.counters.count("GET", "/api/v2/workspaces/{workspace}/watch") == 0


async def test_watch_falls_back_to_sse_when_watch_ws_is_missing(
    client: CoderClient, fake: FakeCoder
) -> None:
    fake.faults.watch_ws_enabled = False
    ws = await client.create_workspace("me", uuid.uuid4(), "dev")
    seen = await watch_until(client, ws.id, agent_ready)
    assert seen[0].latest_build.status is models.BuildStatus.PENDING
    assert fake.counters.count("GET", "/api/v2/workspaces/{workspace}/watch-ws", 404) == 1
    assert fake.hub.opened == 1


async def test_watching_an_unknown_workspace_is_rejected_with_coders_404(
    client: CoderClient,
) -> None:
    with pytest.raises(CoderRejectedError) as caught:
        await watch_until(client, uuid.uuid4(), lambda _: True)
    assert caught.value.status_code == 404
    assert caught.value.message == "Resource not found or you do not have access to this resource"


async def test_a_failed_watch_ws_upgrade_is_unavailable(
    client: CoderClient, fake: FakeCoder
) -> None:
    ws = await client.create_workspace("me", uuid.uuid4(), "dev")
    fake.faults.fail_next(1, status=503)
    with pytest.raises(CoderUnavailableError) as caught:
        await watch_until(client, ws.id, lambda _: True)
    assert caught.value.status_code == 503


@pytest.mark.parametrize("transport", ["watch-ws", "sse"])
async def test_a_watch_dropped_by_coder_raises_unavailable(
    client: CoderClient, fake: FakeCoder, transport: str
) -> None:
    fake.faults.watch_ws_enabled = transport == "watch-ws"
    ws = await client.create_workspace("me", uuid.uuid4(), "stuck")
    async with contextlib.aclosing(client.watch(ws.id)) as snapshots:
        first = await anext(snapshots)
        assert first.id == ws.id
        assert fake.drop_watches() == 1
        with pytest.raises(CoderUnavailableError):
            await anext(snapshots)


async def test_a_watch_ended_by_a_stopping_coder_raises_unavailable(
    client: CoderClient, fake: FakeCoder
) -> None:
    ws = await client.create_workspace("me", uuid.uuid4(), "stuck")
    async with contextlib.aclosing(client.watch(ws.id)) as snapshots:
        await anext(snapshots)
        fake.hub.close_all()
        with pytest.raises(CoderUnavailableError, match="closed the watch"):
            await anext(snapshots)


@pytest.mark.parametrize("watch_ws", [True, False])
async def test_a_watch_outlives_the_request_timeout(watch_ws: bool) -> None:
    # Build steps of 0.5 s against a 0.2 s request timeout: the watch must not be cut.
    fake = FakeCoder(options(job_step_s=0.5, watch_ws=watch_ws))
    await fake.start()
    try:
        async with CoderClient(fake.url, TOKEN, timeout_s=0.2) as client:
            ws = await client.create_workspace("me", uuid.uuid4(), "noagent")
            seen = await watch_until(
                client, ws.id, lambda w: w.latest_build.status is models.BuildStatus.RUNNING
            )
    finally:
        await fake.stop()
    assert models.BuildStatus.STARTING in [s.latest_build.status for s in seen]


async def test_closing_a_watch_early_closes_its_connection(
    client: CoderClient, fake: FakeCoder
) -> None:
    ws = await client.create_workspace("me", uuid.uuid4(), "stuck")
    async with contextlib.aclosing(client.watch(ws.id)) as snapshots:
        await anext(snapshots)
        assert fake.open_watches == 1
    await fake.wait_until(lambda: fake.open_watches == 0)


# --- secrecy ---------------------------------------------------------------------


def texts_of(error: BaseException) -> list[str]:
    found: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found += [str(current), repr(current), *map(repr, current.args)]
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return found


async def test_the_session_token_never_appears_in_errors_reprs_or_logs(
    fake: FakeCoder, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[CoderError] = []

    async def collect(call: Callable[[], object]) -> None:
        try:
            await call()  # type: ignore[misc]
        except CoderError as error:
            errors.append(error)

    async with CoderClient(fake.url, TOKEN, timeout_s=0.5) as client:
        assert TOKEN not in repr(client)
        ws = await client.create_workspace("me", uuid.uuid4(), "stuck")
        await collect(lambda: client.create_workspace("me", uuid.uuid4(), "bad_name"))
        await collect(lambda: client.create_workspace("me", uuid.uuid4(), "stuck"))
        await collect(lambda: client.create_build(ws.id, "stop"))
        fake.faults.fail_next(1)
        await collect(lambda: client.workspace(ws.id))
        fake.faults.throttle_next(1)
        await collect(lambda: client.workspace(ws.id))
        fake.faults.delay_next(1, delay_s=1.0)
        await collect(lambda: client.workspace(ws.id))
        fake.faults.fail_next(1)
        await collect(lambda: watch_until(client, ws.id, lambda _: False))
        await collect(lambda: watch_until(client, uuid.uuid4(), lambda _: False))

        async def dropped() -> None:
            async with contextlib.aclosing(client.watch(ws.id)) as snapshots:
                await anext(snapshots)
                fake.drop_watches()
                await anext(snapshots)

        await collect(dropped)
    fake.faults.watch_ws_enabled = False
    async with CoderClient(fake.url, TOKEN, timeout_s=5) as client:
        await collect(lambda: watch_until(client, uuid.uuid4(), lambda _: False))
    async with CoderClient(f"http://127.0.0.1:{free_port()}", TOKEN, timeout_s=5) as client:
        await collect(lambda: client.workspace(uuid.uuid4()))
    wrong = TOKEN[:10] + "-" + "w" * 22
    async with CoderClient(fake.url, wrong, timeout_s=5) as client:
        await collect(lambda: client.workspace(uuid.uuid4()))
        fake.faults.watch_ws_enabled = True
        await collect(lambda: watch_until(client, ws.id, lambda _: False))

    assert len(errors) == 13
    kinds = {type(e) for e in errors}
    assert {CoderRejectedError, CoderUnavailableError} <= kinds
    for error in errors:
        for text in texts_of(error):
            assert TOKEN not in text
            assert wrong not in text
    captured = capsys.readouterr()
    for text in (caplog.text, captured.out, captured.err):
        assert TOKEN not in text
        assert wrong not in text


async def test_a_token_in_a_foreign_error_is_never_chained() -> None:
    # The WebSocket handshake error's repr carries the request headers: it must not be kept.
    async def refuse(_request: web.Request) -> web.Response:
        return web.Response(status=401, text="{}", content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/v2/workspaces/{id}/watch-ws", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with CoderClient(f"http://{host}:{port}", TOKEN, timeout_s=5) as client:
            with pytest.raises(CoderRejectedError) as caught:
                await watch_until(client, uuid.uuid4(), lambda _: True)
    finally:
        await runner.cleanup()
    assert caught.value.status_code == 401
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
    assert all(TOKEN not in text for text in texts_of(caught.value))


def test_a_client_refuses_a_missing_token_or_a_bad_url() -> None:
    with pytest.raises(ValueError, match="session_token"):
        CoderClient("http://127.0.0.1:1", "")
    with pytest.raises(ValueError, match="base_url"):
        CoderClient("ftp://coder.example.com", TOKEN)
    assert WatchSettings().heartbeat_s == 15.0


async def test_an_unreadable_success_body_is_a_protocol_error() -> None:
    async def garbage(_request: web.Request) -> web.Response:
        return web.json_response({"id": "not-a-uuid"})

    app = web.Application()
    app.router.add_get("/api/v2/workspaces/{id}", garbage)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with CoderClient(f"http://{host}:{port}", TOKEN, timeout_s=5) as client:
            with pytest.raises(CoderProtocolError, match="unreadable workspace"):
                await client.workspace(uuid.uuid4())
    finally:
        await runner.cleanup()
