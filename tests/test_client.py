"""
The Python client and the ``call`` / ``events`` / ``show`` commands, against a real daemon.

The test bus plays Coder (it answers create commands and reports jobs and
heartbeats); the client plays a chat backend.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import pytest

from tests.bus import OWNER_ID, TEMPLATE_ID, Bus, new_id
from tests.conftest import RunningDaemon
from workspaced import client
from workspaced.settings import Settings


async def _play_coder_until_ready(bus: Bus, chat_id: str) -> None:
    (command,) = await bus.command_for(chat_id)
    ws = await bus.created(command)
    agent = new_id()
    await bus.job(ws, "succeeded", agents=[agent])
    await bus.wait_for(
        "workspace_events",
        lambda r: r.data["chat_id"] == chat_id and r.data["to_state"] == "agent_waiting",
    )
    await bus.heartbeat(agent, ws["workspace_id"])


async def test_client_create_workspace_returns_the_result_once_the_agent_connects(
    conf: Settings, bus: Bus, running: RunningDaemon
) -> None:
    chat = new_id()
    async with client.WorkspaceClient(conf.kafka_config(), source="test-chat") as calls:
        pending = asyncio.create_task(
            calls.create_workspace(chat, OWNER_ID, TEMPLATE_ID, name="dev", timeout_s=30)
        )
        await _play_coder_until_ready(bus, chat)
        result = await pending
    assert result.is_error is False
    assert result.chat_id == chat
    assert result.content == {"created": True, "workspace_name": "alice/dev"}


async def test_one_client_serves_many_waiting_calls_each_with_its_own_result(
    conf: Settings, bus: Bus, running: RunningDaemon
) -> None:
    chats = [new_id() for _ in range(5)]
    async with client.WorkspaceClient(conf.kafka_config()) as calls:
        ids = [
            await calls.send("create_workspace", c, OWNER_ID, {"template_id": "bad"}) for c in chats
        ]
        results = await asyncio.gather(*(calls.result(i, 30) for i in ids))
    assert [r.tool_call_id for r in results] == ids
    assert all(r.is_error for r in results)
    assert {r.content["error"] for r in results} == {"invalid template_id: invalid UUID length: 3"}


async def test_client_refuses_a_malformed_call_before_sending_it(conf: Settings) -> None:
    async with client.WorkspaceClient(conf.kafka_config()) as calls:
        with pytest.raises(client.ClientError, match="chat_id"):
            await calls.send("create_workspace", "not-a-uuid", OWNER_ID, {"template_id": "x"})


async def test_client_result_times_out_with_a_clear_error(
    conf: Settings, running: RunningDaemon
) -> None:
    async with client.WorkspaceClient(conf.kafka_config()) as calls:
        call_id = await calls.send(
            "create_workspace", new_id(), OWNER_ID, {"template_id": TEMPLATE_ID}
        )
        with pytest.raises(client.ResultTimeoutError, match=call_id):
            await calls.result(call_id, timeout_s=0.2)


async def test_client_events_follow_one_chat_to_ready(
    conf: Settings, bus: Bus, running: RunningDaemon
) -> None:
    chat, other = new_id(), new_id()
    async with client.WorkspaceClient(conf.kafka_config()) as calls:
        seen: list[client.WorkspaceEvent] = []

        async def follow() -> None:
            async for event in calls.events(chat, from_beginning=True):
                seen.append(event)
                if event.kind == "ready":
                    return

        following = asyncio.create_task(follow())
        await calls.send("create_workspace", other, OWNER_ID, {"template_id": TEMPLATE_ID})
        await calls.send(
            "create_workspace", chat, OWNER_ID, {"template_id": TEMPLATE_ID, "name": "dev"}
        )
        await _play_coder_until_ready(bus, chat)
        await asyncio.wait_for(following, 30)
    assert {e.chat_id for e in seen} == {chat}
    changes = [e.to_state for e in seen if e.kind == "state_changed"]
    assert changes == ["creating", "building", "agent_waiting", "ready"]
    assert seen[-1].workspace_name == "alice/dev"


def _cli(conf: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workspaced.cli", *args],
        env=conf.environment() | {"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_cli_call_prints_the_result_and_show_prints_the_chat(
    conf: Settings, bus: Bus, running: RunningDaemon
) -> None:
    chat = new_id()
    args = ["call", "--chat", chat, "--owner", OWNER_ID, "--template", TEMPLATE_ID]
    args += ["--name", "dev", "--param", "region=eu", "--json", "--timeout", "30"]
    calling = asyncio.create_task(asyncio.to_thread(_cli, conf, *args))
    await _play_coder_until_ready(bus, chat)
    done = await calling
    assert done.returncode == 0, done.stderr
    printed: dict[str, Any] = json.loads(done.stdout)
    assert printed["content"] == {"created": True, "workspace_name": "alice/dev"}

    shown = await asyncio.to_thread(_cli, conf, "show", chat, "--json")
    assert shown.returncode == 0, shown.stderr
    found = json.loads(shown.stdout)
    assert found["chat"]["state"] == "ready"
    assert [h["to_state"] for h in found["history"]] == [
        "creating",
        "building",
        "agent_waiting",
        "ready",
    ]
    assert found["calls"][0]["tool_call_id"] == printed["tool_call_id"]

    human = await asyncio.to_thread(_cli, conf, "show", chat)
    assert "history (4 transitions)" in human.stdout
    assert "agent_waiting" in human.stdout


async def test_cli_call_exits_non_zero_on_an_error_result_and_events_lists_the_chat(
    conf: Settings, running: RunningDaemon
) -> None:
    chat = new_id()
    args = ["call", "--chat", chat, "--owner", OWNER_ID, "--template", "nope", "--timeout", "30"]
    done = await asyncio.to_thread(_cli, conf, *args)
    assert done.returncode == 1
    assert "error" in done.stdout
    assert "invalid template_id" in done.stdout
    missing = await asyncio.to_thread(_cli, conf, "show", new_id())
    assert missing.returncode == 1
    assert "no chat" in missing.stderr
    bad = await asyncio.to_thread(_cli, conf, "show", "not-a-uuid")
    assert bad.returncode == 2
    assert "is not a UUID" in bad.stderr


async def test_events_without_follow_list_what_the_topic_holds_and_end(
    conf: Settings, bus: Bus, running: RunningDaemon
) -> None:
    chats = [new_id() for _ in range(3)]
    async with client.WorkspaceClient(conf.kafka_config()) as calls:
        ids = [
            await calls.send("create_workspace", c, OWNER_ID, {"template_id": TEMPLATE_ID})
            for c in chats
        ]
        for chat in chats:
            await bus.command_for(chat)
        seen = [e async for e in calls.events(from_beginning=True, follow=False)]
    assert {e.chat_id for e in seen} == set(chats)
    assert all(e.to_state == "creating" for e in seen)
    assert len(ids) == 3


async def test_client_start_and_stop_answer_on_a_chat_without_workspace(
    conf: Settings, running: RunningDaemon
) -> None:
    chat = new_id()
    async with client.WorkspaceClient(conf.kafka_config()) as calls:
        started = await calls.start_workspace(chat, OWNER_ID, timeout_s=30)
        stopped = await calls.stop_workspace(chat, OWNER_ID, timeout_s=30)
    for result, tool in ((started, "start_workspace"), (stopped, "stop_workspace")):
        assert result.tool == tool
        assert result.is_error is True
        assert result.content == {"error": "chat has no workspace; use create_workspace first"}


async def test_cli_call_sends_a_stop_and_refuses_a_create_without_template(
    conf: Settings, running: RunningDaemon
) -> None:
    chat = new_id()
    args = ["call", "--tool", "stop_workspace", "--chat", chat, "--owner", OWNER_ID, "--json"]
    done = await asyncio.to_thread(_cli, conf, *args, "--timeout", "30")
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["tool"] == "stop_workspace"
    missing = await asyncio.to_thread(_cli, conf, "call", "--chat", chat, "--owner", OWNER_ID)
    assert missing.returncode == 2
    assert "needs --template" in missing.stderr
