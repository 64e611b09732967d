"""
The Coder bridge against the fake Coder over real HTTP, on real Kafka and PostgreSQL.

Commands are published as the daemon would; the bridge's answers, job
updates and heartbeats are read from the topics. The end-to-end test runs
the daemon too: chat -> daemon -> bridge -> fake Coder -> watch -> daemon.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from consumers import kafka
from devtools.fake_coder.server import FakeCoder, FakeCoderOptions
from tests.bus import OWNER_ID, TEMPLATE_ID, Bus, new_id
from tests.conftest import RunningDaemon, Services, make_settings
from workspaced.bridge import app
from workspaced.settings import Settings

ROLES = (
    "tool_results",
    "workspace_events",
    "workspace_command_results",
    "provisioner_job_updates",
    "agent_heartbeats",
)


class Stack:
    def __init__(self, conf: Settings, fake: FakeCoder, bus: Bus) -> None:
        self.conf = conf
        self.fake = fake
        self.bus = bus
        self.bridges: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    def start_bridge(self, **overrides: Any) -> asyncio.Event:
        conf = self.conf.model_copy(update=overrides) if overrides else self.conf
        stop = asyncio.Event()
        self.bridges.append((stop, asyncio.create_task(app.run(conf, stop))))
        return stop

    async def stop_bridges(self) -> None:
        for stop, task in self.bridges:
            stop.set()
            await asyncio.wait_for(task, 30)
        self.bridges.clear()

    async def command(
        self, name: str, *, template_id: str = TEMPLATE_ID, **extra: Any
    ) -> dict[str, Any]:
        chat = new_id()
        data = {
            "command_id": new_id(),
            "chat_id": chat,
            "owner_id": OWNER_ID,
            "template_id": template_id,
            "name": name,
            "rich_parameter_values": [{"name": "region", "value": "eu"}],
        } | extra
        await self.bus.publish(
            "workspace_commands", chat, "coder.workspace.create.v1", data, ce_id=new_id()
        )
        return data

    async def answer(self, command: dict[str, Any], timeout_s: float = 20.0) -> tuple[str, Any]:
        (found,) = await self.bus.wait_for(
            "workspace_command_results",
            lambda r: r.data["command_id"] == command["command_id"],
            timeout_s=timeout_s,
        )
        return found.ce_type, found.data

    async def job_status(self, workspace_id: str, status: str, **match: Any) -> dict[str, Any]:
        found = await self.bus.wait_for(
            "provisioner_job_updates",
            lambda r: (
                r.data["workspace_id"] == workspace_id
                and r.data["status"] == status
                and all(r.data.get(k) == v for k, v in match.items())
            ),
        )
        return found[-1].data

    def beats(self, agent_id: str) -> list[Any]:
        return [
            r.data for r in self.bus.received["agent_heartbeats"] if r.data["agent_id"] == agent_id
        ]


@pytest.fixture
async def stack(services: Services, database_url: str) -> AsyncIterator[Stack]:
    fake = FakeCoder(
        FakeCoderOptions(job_step_s=0.02, agent_connect_delay_s=0.02, agent_ready_delay_s=0.02)
    )
    url = await fake.start()
    conf = make_settings(
        services,
        database_url,
        coder_url=url,
        coder_session_token=fake.session_token,
        agent_heartbeat_interval_seconds=0.5,
        bridge_lease_seconds=3.0,
    )
    await kafka.ensure_topics(conf.kafka_config())
    bus = await Bus(conf, (*ROLES, "workspace_commands")).__aenter__()
    found = Stack(conf, fake, bus)
    try:
        yield found
    finally:
        await found.stop_bridges()
        await bus.__aexit__(None, None, None)
        await fake.stop()


async def test_bridge_answers_a_201_with_created_and_reports_the_build_and_the_agent(
    stack: Stack,
) -> None:
    stack.start_bridge()
    command = await stack.command("dev")
    ce_type, data = await stack.answer(command)
    assert ce_type == "coder.workspace.created.v1"
    assert data["workspace_name"] == "dev"
    assert data["owner_name"] == f"user-{OWNER_ID.replace('-', '')[:8]}"
    workspace = stack.fake.workspace(uuid.UUID(data["workspace_id"]))
    assert data["build_id"] == workspace["latest_build"]["id"]
    assert data["job_id"] == workspace["latest_build"]["job"]["id"]
    done = await stack.job_status(data["workspace_id"], "succeeded")
    assert done["transition"] == "start"
    assert done["job_id"] == data["job_id"]
    (agent,) = done["agents"]
    beats = await stack.bus.wait_for(
        "agent_heartbeats", lambda r: r.data["agent_id"] == agent["id"], count=2
    )
    assert beats[0].data["workspace_id"] == data["workspace_id"]
    assert {b.data["lifecycle_state"] for b in beats} <= {"created", "starting", "ready"}


async def test_bridge_passes_coder_validation_errors_through_exactly(stack: Stack) -> None:
    stack.start_bridge()
    command = await stack.command("Not_A_Valid_Name!")
    ce_type, data = await stack.answer(command)
    assert ce_type == "coder.workspace.create_failed.v1"
    assert data["status_code"] == 400
    assert data["message"]
    assert data["validations"][0]["field"] == "name"


async def test_a_resent_command_whose_workspace_exists_is_answered_created_not_twice_made(
    stack: Stack,
) -> None:
    stack.start_bridge()
    first = await stack.command("resent")
    _, made = await stack.answer(first)
    # The bridge died after Coder's 201 and before its publish: the same command comes again.
    again = first | {"command_id": first["command_id"]}
    await stack.bus.publish(
        "workspace_commands", first["chat_id"], "coder.workspace.create.v1", again, ce_id=new_id()
    )
    found = await stack.bus.wait_for(
        "workspace_command_results",
        lambda r: r.data["command_id"] == first["command_id"],
        count=2,
    )
    assert {f.data["workspace_id"] for f in found} == {made["workspace_id"]}
    assert {f.ce_type for f in found} == {"coder.workspace.created.v1"}
    assert stack.fake.counters.workspaces_created == 1
    assert stack.fake.counters.count("POST", "/api/v2/users/{user}/workspaces", 409) == 1


async def test_a_name_taken_by_another_template_is_coders_own_409(stack: Stack) -> None:
    stack.start_bridge()
    first = await stack.command("taken")
    await stack.answer(first)
    other = await stack.command("taken", template_id=str(uuid.uuid4()))
    ce_type, data = await stack.answer(other)
    assert ce_type == "coder.workspace.create_failed.v1"
    assert data["status_code"] == 409
    assert "already exists" in data["message"]


async def test_coder_500s_are_retried_until_coder_answers(stack: Stack) -> None:
    stack.fake.faults.fail_next(3, status=500)
    stack.start_bridge()
    command = await stack.command("after-500s")
    ce_type, _ = await stack.answer(command)
    assert ce_type == "coder.workspace.created.v1"
    assert stack.fake.counters.count("POST", "/api/v2/users/{user}/workspaces", 500) == 3
    assert stack.fake.counters.workspaces_created == 1


async def test_coder_429_is_retried_after_its_retry_after(stack: Stack) -> None:
    stack.fake.faults.throttle_next(1, retry_after_s=1)
    stack.start_bridge()
    command = await stack.command("after-429")
    loop = asyncio.get_running_loop()
    began = loop.time()
    ce_type, _ = await stack.answer(command)
    assert ce_type == "coder.workspace.created.v1"
    assert stack.fake.counters.count("POST", "/api/v2/users/{user}/workspaces", 429) == 1
    # Retry-After: 1 was honoured, not a 0.2 s backoff.
    assert loop.time() - began >= 1.0


async def test_a_dropped_watch_reconnects_and_reads_what_changed_meanwhile(stack: Stack) -> None:
    stack.start_bridge()
    command = await stack.command("dropped")
    _, data = await stack.answer(command)
    workspace_id = data["workspace_id"]
    done = await stack.job_status(workspace_id, "succeeded")
    await stack.fake.wait_until(lambda: stack.fake.open_watches >= 1)
    assert stack.fake.drop_watches() >= 1
    build = await _stop_build(stack, workspace_id)
    stopped = await stack.job_status(workspace_id, "succeeded", transition="stop")
    assert stopped["build_id"] == build
    assert stopped["job_id"] != done["job_id"]


async def _stop_build(stack: Stack, workspace_id: str) -> str:
    from coder.client import CoderClient  # noqa: PLC0415

    async with CoderClient(stack.fake.url, stack.fake.session_token) as client:
        build = await client.create_build(workspace_id, "stop")
    return str(build.id)


async def test_a_disconnected_agent_stops_beating(stack: Stack) -> None:
    stack.start_bridge()
    command = await stack.command("beating")
    _, data = await stack.answer(command)
    done = await stack.job_status(data["workspace_id"], "succeeded")
    agent = done["agents"][0]["id"]
    await stack.bus.wait_for("agent_heartbeats", lambda r: r.data["agent_id"] == agent, count=2)
    stack.fake.disconnect_agent(uuid.UUID(data["workspace_id"]))
    # Wait for the watch to say so, then for two beat intervals' worth of silence.
    await stack.fake.wait_until(lambda: stack.fake.open_watches >= 1)
    before = len(stack.beats(agent))
    stack.fake.connect_agent(uuid.UUID(data["workspace_id"]))
    await stack.bus.wait_for(
        "agent_heartbeats", lambda r: r.data["agent_id"] == agent, count=before + 1
    )
    assert len(stack.beats(agent)) > before


async def test_a_restarted_bridge_resumes_its_watches_and_publishes_what_changed_while_down(
    stack: Stack, db: asyncpg.Connection
) -> None:
    stop = stack.start_bridge()
    command = await stack.command("resume")
    _, data = await stack.answer(command)
    workspace_id = data["workspace_id"]
    await stack.job_status(workspace_id, "succeeded")
    stop.set()
    await stack.stop_bridges()
    assert await db.fetchval("SELECT count(*) FROM bridge_watches WHERE owner IS NULL") == 1
    build = await _stop_build(stack, workspace_id)
    await stack.fake.wait_until(
        lambda: stack.fake.workspace(uuid.UUID(workspace_id))["latest_build"]["status"] == "stopped"
    )
    stack.start_bridge()
    stopped = await stack.job_status(workspace_id, "succeeded", transition="stop")
    assert stopped["build_id"] == build


async def test_two_bridges_execute_each_command_once_and_watch_each_workspace_once(
    stack: Stack, db: asyncpg.Connection
) -> None:
    stack.start_bridge()
    stack.start_bridge()
    commands = [await stack.command(f"pair-{i}") for i in range(6)]
    answers = [await stack.answer(c) for c in commands]
    assert all(t == "coder.workspace.created.v1" for t, _ in answers)
    assert stack.fake.counters.workspaces_created == 6
    owners = await db.fetch("SELECT workspace_id, owner FROM bridge_watches")
    assert len(owners) == 6
    assert all(o["owner"] for o in owners)


async def test_through_daemon_bridge_and_fake_coder_a_tool_call_gets_its_workspace(
    stack: Stack, db: asyncpg.Connection
) -> None:
    daemon = RunningDaemon(stack.conf)
    await daemon.start()
    try:
        stack.start_bridge()
        chat = new_id()
        call = await stack.bus.tool_call(chat, name="through")
        (result,) = await stack.bus.results_for(call, timeout_s=30)
        owner = f"user-{OWNER_ID.replace('-', '')[:8]}"
        assert result["content"] == {"created": True, "workspace_name": f"{owner}/through"}
        row = await db.fetchrow(
            "SELECT state, agent_id FROM chat_workspaces WHERE chat_id = $1", chat
        )
        assert row["state"] == "ready"
        assert row["agent_id"] is not None
    finally:
        await daemon.halt()


async def _build_command(
    stack: Stack, chat: str, workspace_id: str, transition: str
) -> dict[str, Any]:
    data = {
        "command_id": new_id(),
        "chat_id": chat,
        "workspace_id": workspace_id,
        "transition": transition,
    }
    await stack.bus.publish(
        "workspace_commands", chat, "coder.workspace.build.v1", data, ce_id=new_id()
    )
    return data


async def test_a_stop_command_queues_one_stop_build_even_when_delivered_twice(stack: Stack) -> None:
    stack.start_bridge()
    command = await stack.command("stopme")
    _, made = await stack.answer(command)
    await stack.job_status(made["workspace_id"], "succeeded")
    stop = await _build_command(stack, made["chat_id"], made["workspace_id"], "stop")
    ce_type, queued = await stack.answer(stop)
    assert ce_type == "coder.workspace.build_queued.v1"
    assert queued["transition"] == "stop"
    workspace = stack.fake.workspace(uuid.UUID(made["workspace_id"]))
    assert queued["build_id"] == workspace["latest_build"]["id"]
    assert queued["job_id"] == workspace["latest_build"]["job"]["id"]
    # Delivered again (the bridge died after Coder queued it): the same build, not a second.
    await stack.bus.publish(
        "workspace_commands", made["chat_id"], "coder.workspace.build.v1", stop, ce_id=new_id()
    )
    found = await stack.bus.wait_for(
        "workspace_command_results", lambda r: r.data["command_id"] == stop["command_id"], count=2
    )
    assert {f.data["build_id"] for f in found} == {queued["build_id"]}
    assert stack.fake.counters.count("POST", "/api/v2/workspaces/{workspace}/builds") == 1
    stopped = await stack.job_status(made["workspace_id"], "succeeded", transition="stop")
    assert stopped["build_id"] == queued["build_id"]


async def test_a_build_coder_refuses_is_answered_with_coders_response(stack: Stack) -> None:
    stack.start_bridge()
    chat = new_id()
    unknown = str(uuid.uuid4())
    start = await _build_command(stack, chat, unknown, "start")
    ce_type, data = await stack.answer(start)
    assert ce_type == "coder.workspace.build_rejected.v1"
    assert data["status_code"] == 404
    assert data["message"]


async def test_through_the_bridge_failed_startup_scripts_reach_the_tool_result(
    stack: Stack,
) -> None:
    conf = stack.conf.model_copy(update={"wait_for_startup_scripts": True})
    daemon = RunningDaemon(conf)
    await daemon.start()
    try:
        stack.start_bridge()
        ok, broken = new_id(), new_id()
        call_ok = await stack.bus.tool_call(ok, name="scripts")
        call_broken = await stack.bus.tool_call(broken, name="scripts-startfail")
        (fine,) = await stack.bus.results_for(call_ok, timeout_s=30)
        (failed,) = await stack.bus.results_for(call_broken, timeout_s=30)
        owner = f"user-{OWNER_ID.replace('-', '')[:8]}"
        assert fine["content"] == {"created": True, "workspace_name": f"{owner}/scripts"}
        assert failed["content"] == {
            "created": True,
            "workspace_name": f"{owner}/scripts-startfail",
            "startup_scripts": "startup_scripts_failed",
            "lifecycle_state": "start_error",
        }
    finally:
        await daemon.halt()


async def test_the_bridge_serves_metrics_and_is_ready_only_while_coder_answers(
    stack: Stack,
) -> None:
    from devtools.services import process  # noqa: PLC0415
    from tests.test_metrics import _get, _sample, _until  # noqa: PLC0415

    address = f"127.0.0.1:{process.free_port('127.0.0.1')}"
    stack.start_bridge(bridge_metrics_address=address)
    base = f"http://{address}"

    async def ready() -> Any:
        status, body = await _get(f"{base}/readyz")
        return body if status == 200 else None

    body = await _until(ready, "the bridge to be ready")
    assert body["checks"]["coder"]["detail"] == "Coder v2.22.0-fake answers"
    command = await stack.command("metered")
    await stack.answer(command)
    _, text = await _get(f"{base}/metrics")
    assert _sample(text, "workspaced_bridge_commands_total", result="created") >= 1
    assert (
        _sample(
            text,
            "workspaced_coder_requests_total",
            operation="POST users/{user}/workspaces",
            status="201",
        )
        >= 1
    )
    assert _sample(text, "workspaced_coder_watches") >= 1
    stack.fake.faults.fail_next(50, status=503)

    async def not_ready() -> Any:
        status, body = await _get(f"{base}/readyz")
        return body if status == 503 else None

    body = await _until(not_ready, "readyz to report Coder failing")
    assert body["checks"]["coder"]["ok"] is False
    assert body["checks"]["postgresql"]["ok"] is True
    assert stack.fake.session_token not in str(body)
