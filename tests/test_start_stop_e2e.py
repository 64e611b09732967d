"""
A chat creates, stops and starts its workspace through ``chat.tool_calls`` alone.

Through the daemon, the Coder bridge and the fake Coder over real HTTP (the
bridge executes ``coder.workspace.build.v1`` as ``POST .../builds``), and
through the daemon and the Kafka-level simulator; on real Kafka and
PostgreSQL.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from consumers import kafka
from devtools import simulator
from devtools.fake_coder.server import FakeCoder, FakeCoderOptions
from devtools.owners import owner_name
from tests.bus import OWNER_ID, Bus, new_id
from tests.conftest import RunningDaemon, Services, make_settings
from workspaced.bridge import app
from workspaced.settings import Settings

ROLES = ("tool_results", "workspace_events", "workspace_commands", "workspace_command_results")
OWNER = f"user-{OWNER_ID.replace('-', '')[:8]}"


class Stack:
    """
    Hold a fake Coder, the test's settings and a bus; start bridges and the simulator on demand.
    """

    def __init__(self, conf: Settings, fake: FakeCoder, bus: Bus) -> None:
        self.conf = conf
        self.fake = fake
        self.bus = bus
        self.tasks: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    def start_bridge(self) -> None:
        stop = asyncio.Event()
        self.tasks.append((stop, asyncio.create_task(app.run(self.conf, stop))))

    def start_simulator(self) -> None:
        options = simulator.SimulatorOptions(
            create_delay_s=0.01, job_step_s=0.05, agent_connect_delay_s=0.05, heartbeat_interval_s=1
        )
        stop = asyncio.Event()
        run = simulator.CoderSimulator(self.conf, options).run(stop)
        self.tasks.append((stop, asyncio.create_task(run)))

    async def stop_all(self) -> None:
        for stop, task in self.tasks:
            stop.set()
            await asyncio.wait_for(task, 30)
        self.tasks.clear()

    async def call(self, chat_id: str, tool: str) -> dict[str, Any]:
        """
        Call ``tool`` (start or stop: no arguments) and return its one result.
        """
        call_id = f"call_{uuid.uuid4().hex[:16]}"
        data = {"tool_call_id": call_id, "chat_id": chat_id, "owner_id": OWNER_ID, "tool": tool}
        await self.bus.publish("tool_calls", chat_id, "chat.tool_call.v1", data | {"arguments": {}})
        (result,) = await self.bus.results_for(call_id, timeout_s=30)
        assert result["tool"] == tool
        return dict(result)


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
    bus = await Bus(conf, ROLES).__aenter__()
    found = Stack(conf, fake, bus)
    daemon = RunningDaemon(conf)
    await daemon.start()
    try:
        yield found
    finally:
        await found.stop_all()
        await daemon.halt()
        await bus.__aexit__(None, None, None)
        await fake.stop()


async def _state(db: asyncpg.Connection, chat_id: str) -> str:
    return str(await db.fetchval("SELECT state FROM chat_workspaces WHERE chat_id = $1", chat_id))


def _states(bus: Bus, chat_id: str) -> list[str]:
    return [
        r.data["to_state"]
        for r in bus.events_for(chat_id)
        if r.ce_type == "chat.workspace.state_changed.v1"
    ]


async def test_through_the_bridge_a_chat_creates_stops_and_starts_its_workspace(
    stack: Stack, db: asyncpg.Connection
) -> None:
    stack.start_bridge()
    chat = new_id()
    create = await stack.bus.tool_call(chat, name="cycle")
    (created,) = await stack.bus.results_for(create, timeout_s=30)
    assert created["content"] == {"created": True, "workspace_name": f"{OWNER}/cycle"}
    workspace_id = await db.fetchval(
        "SELECT workspace_id::text FROM chat_workspaces WHERE chat_id = $1", chat
    )

    stopped = await stack.call(chat, "stop_workspace")
    workspace = stack.fake.workspace(uuid.UUID(workspace_id))
    assert workspace["latest_build"]["transition"] == "stop"
    assert workspace["latest_build"]["status"] == "stopped"
    assert stopped["is_error"] is False
    assert stopped["content"] == {
        "stopped": True,
        "workspace_name": f"{OWNER}/cycle",
        "build_id": workspace["latest_build"]["id"],
    }
    assert await _state(db, chat) == "stopped"
    # Stopped already: answered at once, no second build.
    again = await stack.call(chat, "stop_workspace")
    assert again["content"] == {
        "stopped": True,
        "workspace_name": f"{OWNER}/cycle",
        "no_build": True,
    }

    started = await stack.call(chat, "start_workspace")
    workspace = stack.fake.workspace(uuid.UUID(workspace_id))
    assert workspace["latest_build"]["transition"] == "start"
    assert started["content"] == {
        "started": True,
        "workspace_name": f"{OWNER}/cycle",
        "build_id": workspace["latest_build"]["id"],
    }
    assert await _state(db, chat) == "ready"
    running = await stack.call(chat, "start_workspace")
    assert running["content"] == {
        "started": True,
        "workspace_name": f"{OWNER}/cycle",
        "no_build": True,
    }

    assert _states(stack.bus, chat) == [
        "creating",
        "building",
        "agent_waiting",
        "ready",
        "stopping",
        "stopped",
        "building",
        "agent_waiting",
        "ready",
    ]
    builds = stack.fake.counters.count("POST", "/api/v2/workspaces/{workspace}/builds")
    assert builds == 2
    assert stack.fake.counters.workspaces_created == 1


async def test_through_the_bridge_a_failed_start_build_is_the_start_error(
    stack: Stack, db: asyncpg.Connection
) -> None:
    # The fake Coder fails every start build of a workspace whose name holds "fail".
    stack.start_bridge()
    chat = new_id()
    create = await stack.bus.tool_call(chat, name="dies-fail")
    (created,) = await stack.bus.results_for(create, timeout_s=30)
    assert created["content"] == {
        "error": "workspace build failed: terraform apply: exit status 1",
    }
    assert await _state(db, chat) == "failed"
    # start_workspace on the failed workspace tries again, as Coder's tool does.
    started = await stack.call(chat, "start_workspace")
    assert started["is_error"] is True
    assert started["content"]["error"] == (
        "workspace start build failed: terraform apply: exit status 1"
    )
    workspace_id = await db.fetchval(
        "SELECT workspace_id::text FROM chat_workspaces WHERE chat_id = $1", chat
    )
    latest = stack.fake.workspace(uuid.UUID(workspace_id))["latest_build"]
    assert started["content"]["build_id"] == latest["id"]
    assert await _state(db, chat) == "failed"


async def test_through_the_simulator_a_chat_creates_stops_and_starts_its_workspace(
    stack: Stack, db: asyncpg.Connection
) -> None:
    stack.start_simulator()
    chat = new_id()
    create = await stack.bus.tool_call(chat, name="simulated")
    (created,) = await stack.bus.results_for(create, timeout_s=30)
    name = f"{owner_name(OWNER_ID)}/simulated"
    assert created["content"] == {"created": True, "workspace_name": name}
    stopped = await stack.call(chat, "stop_workspace")
    assert stopped["content"]["stopped"] is True
    assert stopped["content"]["build_id"]
    assert await _state(db, chat) == "stopped"
    started = await stack.call(chat, "start_workspace")
    assert started["content"]["started"] is True
    assert started["content"]["build_id"] not in {None, stopped["content"]["build_id"]}
    assert await _state(db, chat) == "ready"
    commands = [
        r.data.get("transition") for r in stack.bus.received["workspace_commands"] if r.key == chat
    ]
    assert commands == [None, "stop", "start"]
