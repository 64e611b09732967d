"""
Waiting for the agent's startup scripts (wait_for_startup_scripts), through a real daemon.

Coder's chat tools wait up to 10 minutes after the agent connects for its
lifecycle to reach ``ready`` (workspacereadiness.go). Here the heartbeat's
``lifecycle_state`` drives it; the bus plays Coder, and the last test goes
through the bridge and the fake Coder over HTTP.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from tests.bus import Bus, new_id


async def _connected(bus: Bus, chat: str, *, name: str = "dev") -> tuple[str, dict[str, str], str]:
    call = await bus.tool_call(chat, name=name)
    (command,) = await bus.command_for(chat)
    ws = await bus.created(command)
    agent = new_id()
    await bus.job(ws, "succeeded", agents=[agent])
    await bus.wait_for(
        "workspace_events",
        lambda r: r.data["chat_id"] == chat and r.data["to_state"] == "agent_waiting",
    )
    return call, ws, agent


async def _state(db: asyncpg.Connection, chat: str) -> Any:
    return await db.fetchrow(
        "SELECT state, agent_status, deadline_at FROM chat_workspaces WHERE chat_id = $1", chat
    )


async def test_a_starting_agent_is_answered_when_its_scripts_finish(
    daemon_with: Any, db: asyncpg.Connection
) -> None:
    _, bus = await daemon_with(wait_for_startup_scripts=True)
    chat = new_id()
    call, ws, agent = await _connected(bus, chat)
    await bus.heartbeat(agent, ws["workspace_id"], "starting")
    await bus.wait_for("workspace_events", lambda r: r.data["trigger"] == "startup_scripts_running")
    row = await _state(db, chat)
    assert (row["state"], row["agent_status"]) == ("agent_waiting", "connected")
    assert bus.received["tool_results"] == []
    await bus.heartbeat(agent, ws["workspace_id"], "ready")
    (result,) = await bus.results_for(call)
    assert result["content"] == {"created": True, "workspace_name": "alice/dev"}
    assert (await _state(db, chat))["state"] == "ready"


async def test_scripts_that_end_in_start_error_answer_with_startup_scripts_failed(
    daemon_with: Any,
) -> None:
    _, bus = await daemon_with(wait_for_startup_scripts=True)
    chat = new_id()
    call, ws, agent = await _connected(bus, chat)
    await bus.heartbeat(agent, ws["workspace_id"], "start_error")
    (result,) = await bus.results_for(call)
    assert result["content"] == {
        "created": True,
        "workspace_name": "alice/dev",
        "startup_scripts": "startup_scripts_failed",
        "lifecycle_state": "start_error",
    }


async def test_scripts_that_outrun_the_startup_timer_answer_with_startup_scripts_timeout(
    daemon_with: Any, db: asyncpg.Connection
) -> None:
    _, bus = await daemon_with(
        wait_for_startup_scripts=True, startup_script_timeout_seconds=1.0, timer_sweep_seconds=0.5
    )
    chat = new_id()
    call, ws, agent = await _connected(bus, chat)
    await bus.heartbeat(agent, ws["workspace_id"], "created")
    (result,) = await bus.results_for(call, timeout_s=30)
    assert result["content"]["startup_scripts"] == "startup_scripts_timeout"
    assert (await _state(db, chat))["state"] == "ready"


async def test_without_the_setting_a_starting_agent_is_answered_at_its_first_heartbeat(
    daemon_with: Any,
) -> None:
    _, bus = await daemon_with()
    chat = new_id()
    call, ws, agent = await _connected(bus, chat)
    await bus.heartbeat(agent, ws["workspace_id"], "starting")
    (result,) = await bus.results_for(call)
    assert result["content"] == {"created": True, "workspace_name": "alice/dev"}
