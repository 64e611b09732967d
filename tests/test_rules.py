"""
One integration test (or more) per rule of the spec, R1 to R16, and per case of start and stop.

Each drives a real daemon (in this process, on real PostgreSQL and Kafka) only
through Kafka records, and reads results from the output topics and tables.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from telemetry import metrics
from tests.bus import OWNER_ID, Bus, new_id, workspace_for
from tests.conftest import RunningDaemon


async def _build_until_ready(bus: Bus, chat_id: str, call_id: str) -> dict[str, str]:
    (command,) = await bus.command_for(chat_id)
    ws = await bus.created(command)
    agent = new_id()
    await bus.job(ws, "running")
    await bus.job(ws, "succeeded", agents=[agent])
    await bus.heartbeat(agent, ws["workspace_id"])
    ws["agent_id"] = agent
    await bus.results_for(call_id)
    return ws


async def _accepted(bus: Bus, chat_id: str) -> tuple[str, dict[str, str]]:
    """
    Ask for a workspace named dev and have Coder accept the create command.
    """
    call = await bus.tool_call(chat_id, name="dev")
    (command,) = await bus.command_for(chat_id)
    return call, await bus.created(command)


async def _waiting(db: asyncpg.Connection, chat_id: str, count: int) -> None:
    """
    Wait until ``count`` calls wait on the chat: inputs on other topics may overtake them.
    """
    query = "SELECT count(*) FROM tool_calls WHERE chat_id = $1 AND answered_at IS NULL"
    for _ in range(200):
        if await db.fetchval(query, chat_id) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} calls never waited on chat {chat_id}")


async def _until(check: Any, what: str, timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"waited {timeout_s} s for {what}")
        await asyncio.sleep(0.05)


async def _state(db: asyncpg.Connection, chat_id: str) -> str:
    return await db.fetchval("SELECT state FROM chat_workspaces WHERE chat_id = $1", chat_id)


async def test_r4_r8_r9_r10_a_tool_call_creates_builds_and_answers_when_the_agent_connects(
    bus: Bus, running: RunningDaemon, db: asyncpg.Connection
) -> None:
    chat = new_id()
    call = await bus.tool_call(chat, name="dev")
    (command,) = await bus.command_for(chat)
    assert command["name"] == "dev"
    assert await _state(db, chat) == "creating"
    ws = await bus.created(command)
    await bus.job(ws, "pending")
    await bus.job(ws, "running")
    agent = new_id()
    await bus.job(ws, "succeeded", agents=[agent])
    await bus.wait_for("workspace_events", lambda r: r.data["to_state"] == "agent_waiting")
    assert await _state(db, chat) == "agent_waiting"
    await bus.heartbeat(agent, ws["workspace_id"])
    (result,) = await bus.results_for(call)
    assert result["is_error"] is False
    assert result["content"] == {"created": True, "workspace_name": "alice/dev"}
    assert await _state(db, chat) == "ready"
    states = [
        r.data["to_state"] for r in bus.events_for(chat) if r.ce_type.endswith("state_changed.v1")
    ]
    assert states == ["creating", "building", "agent_waiting", "ready"]
    await bus.wait_for("workspace_events", lambda r: r.ce_type == "chat.workspace.ready.v1")


# R1 ------------------------------------------------------------------------


async def test_r1_a_blank_template_id_gets_the_required_error_and_creates_nothing(
    bus: Bus, running: RunningDaemon, db: asyncpg.Connection
) -> None:
    chat = new_id()
    call = await bus.tool_call(chat, template_id="   ")
    (result,) = await bus.results_for(call)
    assert result["is_error"] is True
    assert result["content"] == {"error": "template_id is required; use list_templates to find one"}
    assert await db.fetchval("SELECT count(*) FROM chat_workspaces WHERE chat_id = $1", chat) == 0
    assert bus.received["workspace_commands"] == []


async def test_r1_a_template_id_that_is_not_a_uuid_gets_the_parse_error(
    bus: Bus, running: RunningDaemon
) -> None:
    call = await bus.tool_call(new_id(), template_id="not-a-uuid")
    (result,) = await bus.results_for(call)
    assert result["content"] == {"error": "invalid template_id: invalid UUID length: 10"}
    assert bus.received["workspace_commands"] == []


# R2, R3 --------------------------------------------------------------------


async def test_r2_an_invalid_name_seeds_a_generated_one_stored_before_the_command(
    bus: Bus, running: RunningDaemon, db: asyncpg.Connection
) -> None:
    chat = new_id()
    await bus.tool_call(chat, name="My Dev Box!")
    (command,) = await bus.command_for(chat)
    assert command["name"].startswith("mydevbox-")
    assert len(command["name"]) == len("mydevbox-") + 4
    stored = await db.fetchval(
        "SELECT requested_name FROM chat_workspaces WHERE chat_id = $1", chat
    )
    assert stored == command["name"]


async def test_r2_without_a_name_the_template_name_is_the_seed(
    bus: Bus, running: RunningDaemon
) -> None:
    chat = new_id()
    await bus.tool_call(chat, template_name="Python Dev")
    (command,) = await bus.command_for(chat)
    assert command["name"].startswith("pythondev-")


async def test_r3_parameters_become_rich_parameter_values_sorted_by_name(
    bus: Bus, running: RunningDaemon
) -> None:
    chat = new_id()
    await bus.tool_call(chat, name="dev", parameters={"zone": "eu", "cpu": "4", "disk": "20"})
    (command,) = await bus.command_for(chat)
    assert command["rich_parameter_values"] == [
        {"name": "cpu", "value": "4"},
        {"name": "disk", "value": "20"},
        {"name": "zone", "value": "eu"},
    ]


# R4, R8 --------------------------------------------------------------------


async def test_r8_a_rejected_create_fails_the_chat_with_coders_message_and_r4_retries_from_failed(
    bus: Bus, running: RunningDaemon, db: asyncpg.Connection
) -> None:
    chat = new_id()
    call = await bus.tool_call(chat, name="dev")
    (command,) = await bus.command_for(chat)
    await bus.create_failed(
        command,
        "Workspace name already in use.",
        detail="a workspace named dev exists",
        status_code=409,
        validations=[{"field": "name", "detail": "already in use"}],
    )
    (result,) = await bus.results_for(call)
    assert result["content"] == {
        "error": "Workspace name already in use.: a workspace named dev exists; name: already in use"
    }
    assert await _state(db, chat) == "failed"
    await bus.wait_for("workspace_events", lambda r: r.ce_type == "chat.workspace.failed.v1")
    again = await bus.tool_call(chat, name="dev2")
    commands = await bus.command_for(chat, count=2)
    assert commands[1]["name"] == "dev2"
    assert commands[1]["command_id"] != commands[0]["command_id"]
    assert await _state(db, chat) == "creating"
    assert again


# R5 ------------------------------------------------------------------------


async def test_r5_calls_while_building_create_nothing_and_each_gets_one_answer_at_ready(
    bus: Bus, running: RunningDaemon, db: asyncpg.Connection
) -> None:
    chat = new_id()
    first = await bus.tool_call(chat, name="dev")
    (command,) = await bus.command_for(chat)
    ws = await bus.created(command)
    await bus.wait_for("workspace_events", lambda r: r.data["to_state"] == "building")
    second = await bus.tool_call(chat, name="other")
    third = await bus.tool_call(chat)
    agent = new_id()
    await bus.heartbeat(agent, ws["workspace_id"])
    await _waiting(db, chat, 3)
    await asyncio.sleep(0.3)
    await bus.job(ws, "succeeded", agents=[agent])
    (r1,) = await bus.results_for(first)
    (r2,) = await bus.results_for(second)
    (r3,) = await bus.results_for(third)
    assert r1["content"] == {"created": True, "workspace_name": "alice/dev"}
    expected = {
        "created": False,
        "workspace_name": "alice/dev",
        "status": "already_exists",
        "message": "workspace was already being built and is now ready",
    }
    assert r2["content"] == expected
    assert r3["content"] == expected
    await bus.settle(db)
    assert len(bus.received["workspace_commands"]) == 1
    assert len(bus.received["tool_results"]) == 3


async def test_r5_calls_waiting_on_a_failed_build_get_the_existing_build_error(
    bus: Bus, running: RunningDaemon, db: asyncpg.Connection
) -> None:
    chat = new_id()
    first = await bus.tool_call(chat, name="dev")
    (command,) = await bus.command_for(chat)
    ws = await bus.created(command)
    second = await bus.tool_call(chat)
    await _waiting(db, chat, 2)
    await bus.wait_for("workspace_events", lambda r: r.data["to_state"] == "building")
    await bus.job(ws, "failed", error="terraform: quota exceeded")
    (r1,) = await bus.results_for(first)
    (r2,) = await bus.results_for(second)
    assert r1["content"] == {"error": "workspace build failed: terraform: quota exceeded"}
    assert r2["content"] == {"error": "existing workspace build failed: terraform: quota exceeded"}
    assert r1["is_error"] and r2["is_error"]


# R6 ------------------------------------------------------------------------


async def test_r6_a_call_on_a_ready_chat_with_a_live_agent_is_answered_at_once(
    bus: Bus, running: RunningDaemon
) -> None:
    chat = new_id()
    first = await bus.tool_call(chat, name="dev")
    ws = await _build_until_ready(bus, chat, first)
    await bus.heartbeat(ws["agent_id"], ws["workspace_id"])
    second = await bus.tool_call(chat)
    (result,) = await bus.results_for(second)
    assert result["content"] == {
        "created": False,
        "workspace_name": "alice/dev",
        "status": "already_exists",
        "message": "workspace is already running and reachable",
    }
    assert len(bus.received["workspace_commands"]) == 1


async def test_r6_a_call_on_a_ready_chat_whose_agent_went_silent_creates_a_new_workspace(
    daemon_with: Any, db: asyncpg.Connection
) -> None:
    _, bus = await daemon_with(agent_inactivity_timeout_seconds=1.0)
    chat = new_id()
    first = await bus.tool_call(chat, name="dev")
    ws = await _build_until_ready(bus, chat, first)
    silent = "SELECT now() - last_seen_at > interval '1 second' FROM agents WHERE agent_id = $1"
    await _until(lambda: db.fetchval(silent, ws["agent_id"]), "the agent to fall silent")
    await bus.tool_call(chat, name="dev")
    commands = await bus.command_for(chat, count=2)
    assert commands[0]["command_id"] != commands[1]["command_id"]
    assert await _state(db, chat) == "creating"


# R7 ------------------------------------------------------------------------


async def test_r7_a_call_after_a_successful_stop_build_is_told_the_workspace_is_stopped(
    bus: Bus, running: RunningDaemon, db: asyncpg.Connection
) -> None:
    chat = new_id()
    first = await bus.tool_call(chat, name="dev")
    ws = await _build_until_ready(bus, chat, first)
    stop_job = new_id()
    await bus.job(ws, "running", transition="stop", job_id=stop_job)
    await bus.job(ws, "succeeded", transition="stop", job_id=stop_job)
    await bus.settle(db)
    second = await bus.tool_call(chat)
    (result,) = await bus.results_for(second)
    assert result["content"] == {
        "created": False,
        "workspace_name": "alice/dev",
        "status": "stopped",
        "message": "workspace is stopped; use start_workspace to start it",
    }
    assert len(bus.received["workspace_commands"]) == 1


async def test_r7_a_successful_delete_build_unbinds_the_workspace(
    bus: Bus, running: RunningDaemon, db: asyncpg.Connection
) -> None:
    chat = new_id()
    first = await bus.tool_call(chat, name="dev")
    ws = await _build_until_ready(bus, chat, first)
    await bus.job(ws, "succeeded", transition="delete", job_id=new_id())
    await bus.wait_for("workspace_events", lambda r: r.data["to_state"] == "none")
    row = await db.fetchrow(
        "SELECT state, workspace_id FROM chat_workspaces WHERE chat_id = $1", chat
    )
    assert row["state"] == "none"
    assert row["workspace_id"] is None


# R9 ------------------------------------------------------------------------


async def test_r9_a_canceled_build_fails_the_chat(bus: Bus, running: RunningDaemon) -> None:
    chat = new_id()
    call, ws = await _accepted(bus, chat)
    await bus.job(ws, "canceling")
    await bus.job(ws, "canceled")
    (result,) = await bus.results_for(call)
    assert result["content"] == {"error": "workspace build failed: build was canceled"}


async def test_r9_a_failed_build_without_an_error_says_build_failed(
    bus: Bus, running: RunningDaemon
) -> None:
    chat = new_id()
    call, ws = await _accepted(bus, chat)
    await bus.job(ws, "failed")
    (result,) = await bus.results_for(call)
    assert result["content"] == {"error": "workspace build failed: build failed"}


async def test_r9_a_build_without_agents_is_ready_at_once_with_no_agent(
    bus: Bus, running: RunningDaemon, db: asyncpg.Connection
) -> None:
    chat = new_id()
    call, ws = await _accepted(bus, chat)
    await bus.job(ws, "succeeded", agents=[])
    (result,) = await bus.results_for(call)
    assert result["content"] == {
        "created": True,
        "workspace_name": "alice/dev",
        "agent_status": "no_agent",
    }
    assert await _state(db, chat) == "ready"


async def test_r9_an_agent_that_already_sent_a_heartbeat_makes_the_chat_ready_at_once(
    bus: Bus, running: RunningDaemon
) -> None:
    chat = new_id()
    call, ws = await _accepted(bus, chat)
    agent, other = new_id(), new_id()
    await bus.heartbeat(agent, ws["workspace_id"])
    await asyncio.sleep(0.3)
    await bus.job(ws, "succeeded", agents=[agent, other])
    (result,) = await bus.results_for(call)
    assert result["content"] == {"created": True, "workspace_name": "alice/dev"}
    states = [
        r.data["to_state"] for r in bus.events_for(chat) if r.ce_type.endswith("state_changed.v1")
    ]
    assert states == ["creating", "building", "ready"]


# R11 -----------------------------------------------------------------------


async def test_r11_a_build_that_takes_too_long_times_out_without_polling(
    daemon_with: Any, db: asyncpg.Connection
) -> None:
    _, bus = await daemon_with(build_timeout_seconds=1.0)
    chat = new_id()
    call = await bus.tool_call(chat, name="dev")
    (command,) = await bus.command_for(chat)
    await bus.created(command)
    (result,) = await bus.results_for(call, timeout_s=10)
    assert result["content"] == {
        "error": "workspace build failed: timed out waiting for workspace build"
    }
    assert await _state(db, chat) == "failed"


async def test_r11_an_agent_that_never_connects_answers_not_ready_and_a_late_heartbeat_still_makes_it_ready(
    daemon_with: Any, db: asyncpg.Connection
) -> None:
    _, bus = await daemon_with(agent_connect_timeout_seconds=1.0)
    chat = new_id()
    call, ws = await _accepted(bus, chat)
    agent = new_id()
    await bus.job(ws, "succeeded", agents=[agent])
    (result,) = await bus.results_for(call, timeout_s=10)
    assert result["content"] == {
        "created": True,
        "workspace_name": "alice/dev",
        "agent_status": "not_ready",
        "agent_error": "timed out waiting for workspace agent",
    }
    assert await _state(db, chat) == "agent_waiting"
    await bus.heartbeat(agent, ws["workspace_id"])
    await bus.wait_for("workspace_events", lambda r: r.ce_type == "chat.workspace.ready.v1")
    assert await _state(db, chat) == "ready"
    assert len(await bus.results_for(call)) == 1


# R12 -----------------------------------------------------------------------


async def test_r12_job_updates_and_heartbeats_before_the_workspace_is_bound_are_applied_at_binding(
    bus: Bus, running: RunningDaemon, db: asyncpg.Connection
) -> None:
    chat = new_id()
    call = await bus.tool_call(chat, name="dev")
    (command,) = await bus.command_for(chat)
    ws = workspace_for(command)
    agent = new_id()
    await bus.job(ws, "succeeded", agents=[agent])
    await bus.heartbeat(agent, ws["workspace_id"])
    await bus.settle(db)  # both facts are stored before the workspace is bound
    data = ws | {"workspace_name": "dev", "owner_name": "alice"}
    await bus.publish("workspace_command_results", chat, "coder.workspace.created.v1", data)
    (result,) = await bus.results_for(call)
    assert result["content"] == {"created": True, "workspace_name": "alice/dev"}


async def test_r12_a_job_never_moves_backwards(
    bus: Bus, running: RunningDaemon, db: asyncpg.Connection
) -> None:
    chat = new_id()
    call, ws = await _accepted(bus, chat)
    await bus.job(ws, "succeeded", agents=[])
    await bus.results_for(call)
    await bus.job(ws, "running")
    await bus.job(ws, "failed", error="late")
    await bus.settle(db)
    status = await db.fetchval(
        "SELECT status FROM provisioner_jobs WHERE job_id = $1", ws["job_id"]
    )
    assert status == "succeeded"
    assert await _state(db, chat) == "ready"
    assert len(bus.received["tool_results"]) == 1


async def test_r12_an_event_seen_before_changes_nothing_and_emits_nothing(
    bus: Bus, running: RunningDaemon, db: asyncpg.Connection
) -> None:
    chat = new_id()
    call = await bus.tool_call(chat, name="dev")
    (command,) = await bus.command_for(chat)
    ws = await bus.created(command, ce_id="created-1")
    await bus.wait_for("workspace_events", lambda r: r.data["to_state"] == "building")
    before = len(bus.received["workspace_events"])
    version = await db.fetchval("SELECT version FROM chat_workspaces WHERE chat_id = $1", chat)
    await bus.created(command, ce_id="created-1")  # same (source, id), other payload
    await bus.job(ws, "failed", error="boom", ce_id="job-1")
    await bus.results_for(call)
    await bus.job(ws, "failed", error="boom", ce_id="job-1")
    await bus.settle(db)
    transitions = await db.fetchval(
        "SELECT count(*) FROM workspace_transitions WHERE chat_id = $1", chat
    )
    assert transitions == version + 1  # creating, building, failed
    assert len(bus.received["workspace_events"]) == before + 2  # failed: state_changed + failed
    assert len(bus.received["tool_results"]) == 1


# R13 -----------------------------------------------------------------------


async def test_r13_many_concurrent_calls_for_one_chat_send_exactly_one_create(
    bus: Bus, running: RunningDaemon
) -> None:
    chat = new_id()
    calls = await asyncio.gather(*(bus.tool_call(chat, name=f"n{i}") for i in range(20)))
    (command,) = await bus.command_for(chat)
    ws = await bus.created(command)
    await bus.job(ws, "succeeded", agents=[])
    for call in calls:
        assert len(await bus.results_for(call)) == 1
    created = [r for r in bus.received["tool_results"] if r.data["content"].get("created")]
    assert len(created) == 1
    assert len(bus.received["workspace_commands"]) == 1


# R14 -----------------------------------------------------------------------


async def test_r14_a_redelivered_tool_call_gets_the_same_result_with_the_same_event_id(
    bus: Bus, running: RunningDaemon
) -> None:
    chat = new_id()
    call = await bus.tool_call(chat, template_id="")
    await bus.results_for(call)
    await bus.tool_call(chat, tool_call_id=call, template_id="")  # a new ce_id, same call
    found = await bus.wait_for("tool_results", lambda r: r.data["tool_call_id"] == call, count=2)
    assert found[0].headers["ce_id"] == found[1].headers["ce_id"]
    assert found[0].data == found[1].data


# R15 -----------------------------------------------------------------------


async def test_r15_undecodable_records_go_to_the_dead_letters_with_a_reason_and_the_daemon_goes_on(
    daemon_with: Any,
) -> None:
    _, bus = await daemon_with(max_record_bytes=4096)
    await bus.publish("tool_calls", "k1", "chat.tool_call.v1", None, value=b"{not json")
    await bus.publish("agent_heartbeats", "k2", "coder.unknown.v1", {"x": 1})
    await bus.publish(
        "provisioner_job_updates", "k3", "coder.provisioner_job.updated.v1", {"job_id": 5}
    )
    await bus.publish("tool_calls", "k4", "chat.tool_call.v1", {"x": "y" * 10_000})
    dead = await bus.wait_for("dead_letters", count=4)
    reasons = {d.key: d.headers["dlq_reason"] for d in dead}
    assert reasons["k1"].startswith("value is not JSON")
    assert "unknown event type 'coder.unknown.v1'" in reasons["k2"]
    assert reasons["k3"].startswith("invalid data: job_id")
    assert "over the limit" in reasons["k4"]
    (big,) = [d for d in dead if d.key == "k4"]
    assert big.headers["dlq_original_bytes"] == str(len(b'{"x":""}') + 10_000)
    assert len(big.value) == 4096  # kept up to the limit, so the relay can publish it
    assert all(
        d.headers["dlq_topic"].endswith(
            ("tool_calls", "agent_heartbeats", "provisioner_job_updates")
        )
        for d in dead
    )
    assert all("dlq_partition" in d.headers and "dlq_offset" in d.headers for d in dead)
    call = await bus.tool_call(new_id(), template_id="")
    assert len(await bus.results_for(call)) == 1


async def test_r15_a_tool_call_with_readable_ids_but_bad_arguments_gets_an_error_result(
    bus: Bus, running: RunningDaemon
) -> None:
    chat = new_id()
    call = await bus.tool_call(chat, name="dev", parameters={"cpu": 4})
    (result,) = await bus.results_for(call)
    assert result["is_error"] is True
    assert result["content"]["error"].startswith("invalid arguments: arguments.parameters.cpu")
    assert bus.received["dead_letters"] == []


async def test_structured_mode_cloudevents_are_accepted(bus: Bus, running: RunningDaemon) -> None:
    chat = new_id()
    data = {
        "tool_call_id": "structured-1",
        "chat_id": chat,
        "owner_id": new_id(),
        "tool": "create_workspace",
        "arguments": {"template_id": ""},
    }
    await bus.publish("tool_calls", chat, "chat.tool_call.v1", data, structured=True)
    (result,) = await bus.results_for("structured-1")
    assert result["is_error"] is True


async def test_r15_a_record_that_cannot_be_applied_is_dead_lettered_and_the_rest_of_its_batch_applies(
    bus: Bus, running: RunningDaemon
) -> None:
    chat = new_id()
    poison = await bus.tool_call(
        chat, tool_call_id="nul\u0000byte", name="dev"
    )  # PostgreSQL text has no NUL
    good = await bus.tool_call(new_id(), template_id="")
    (dead,) = await bus.wait_for("dead_letters")
    assert dead.headers["dlq_reason"].startswith("could not be applied:")
    assert dead.data["tool_call_id"] == poison
    assert len(await bus.results_for(good)) == 1


# R16 -----------------------------------------------------------------------


async def test_r16_while_postgresql_refuses_connections_nothing_is_acknowledged_or_lost(
    bus: Bus, running: RunningDaemon, services: Any, database_url: str
) -> None:
    name = database_url.rsplit("/", 1)[1]
    warmup = await bus.tool_call(new_id(), template_id="")
    await bus.results_for(warmup)  # the daemon is up and connected
    admin = await asyncpg.connect(services.server_url)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        tried = metrics.STORAGE_ERRORS.labels("unavailable")._value.get()
        call = await bus.tool_call(new_id(), template_id="")

        async def retried_twice() -> bool:
            return metrics.STORAGE_ERRORS.labels("unavailable")._value.get() >= tried + 2

        await _until(retried_twice, "the daemon to meet the outage twice")
        assert [r for r in bus.received["tool_results"] if r.data["tool_call_id"] == call] == []
        assert bus.received["dead_letters"] == [], "an outage is not the record's fault"
        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        (result,) = await bus.results_for(call, timeout_s=30)
        assert result["is_error"] is True
        assert running.task is not None and not running.task.done(), "the daemon went on"
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        await admin.close()


async def test_r13_a_retry_after_the_create_timer_sends_the_same_command_again_not_a_second_one(
    daemon_with: Any, db: asyncpg.Connection
) -> None:
    _, bus = await daemon_with(create_timeout_seconds=1.0)
    chat = new_id()
    first = await bus.tool_call(chat, name="dev", parameters={"cpu": "2"})
    (r1,) = await bus.results_for(first, timeout_s=10)
    assert r1["content"] == {"error": "timed out waiting for Coder to accept the create"}
    second = await bus.tool_call(chat, name="other")
    c1, c2 = await bus.command_for(chat, count=2)
    assert c1 == c2, "the unanswered command is sent again as it was (R2: same name)"
    ws = await bus.created(c2)
    await bus.job(ws, "succeeded", agents=[])
    (r2,) = await bus.results_for(second)
    assert r2["content"] == {
        "created": True,
        "workspace_name": "alice/dev",
        "agent_status": "no_agent",
    }
    assert await _state(db, chat) == "ready"


async def test_r15_a_dead_letter_keeps_the_original_key_and_headers_byte_for_byte(
    bus: Bus, running: RunningDaemon
) -> None:
    key = b"\x00\xffraw-key"
    headers = [("ce_specversion", b"1.0"), ("x-bin", b"\x00\x01\xfe"), ("x-bin", b"again")]
    await bus.producer.send_and_wait(
        bus.conf.topic("tool_calls"), b"\x00not json", key=key, headers=headers
    )
    (dead,) = await bus.wait_for("dead_letters")
    raw = [r for r in bus.raw_dead_letters if r.key == key]
    assert len(raw) == 1
    assert raw[0].value == b"\x00not json"
    assert [h for h in raw[0].headers if h[0] in {"ce_specversion", "x-bin"}] == headers
    # Headers CloudEvents does not define may hold any bytes; the id is what is missing.
    assert dead.headers["dlq_reason"] == "missing CloudEvents attribute id"


async def test_r15_a_tool_call_with_a_bad_owner_id_is_a_dead_letter_not_an_answer(
    bus: Bus, running: RunningDaemon
) -> None:
    chat = new_id()
    data = {
        "tool_call_id": "bad-owner",
        "chat_id": chat,
        "owner_id": "nobody",
        "tool": "create_workspace",
        "arguments": {"template_id": ""},
    }
    await bus.publish("tool_calls", chat, "chat.tool_call.v1", data)
    (dead,) = await bus.wait_for("dead_letters")
    assert dead.headers["dlq_reason"].startswith("invalid data: owner_id")
    assert [r for r in bus.received["tool_results"] if r.data["tool_call_id"] == "bad-owner"] == []


async def test_r6_r7_a_workspace_stopped_and_started_again_is_followed_not_created_twice(
    bus: Bus, running: RunningDaemon, db: asyncpg.Connection
) -> None:
    chat = new_id()
    first = await bus.tool_call(chat, name="dev")
    ws = await _build_until_ready(bus, chat, first)
    stop_job, start_job, new_agent = new_id(), new_id(), new_id()
    await bus.job(ws, "succeeded", transition="stop", job_id=stop_job)
    await bus.job(ws, "succeeded", transition="start", job_id=start_job, agents=[new_agent])
    await bus.heartbeat(new_agent, ws["workspace_id"])
    for _ in range(100):
        row = await db.fetchrow(
            "SELECT state, job_id::text, agent_id::text FROM chat_workspaces WHERE chat_id = $1",
            chat,
        )
        # The chat follows the restart: stopping, stopped, building, then ready.
        if row["job_id"] == start_job and row["state"] == "ready":
            break
        await asyncio.sleep(0.05)
    assert (row["job_id"], row["agent_id"]) == (start_job, new_agent)
    second = await bus.tool_call(chat)
    (result,) = await bus.results_for(second)
    assert result["content"]["message"] == "workspace is already running and reachable"
    assert len(bus.received["workspace_commands"]) == 1


# Start and stop ---------------------------------------------------------------


async def _call(bus: Bus, chat_id: str, tool: str, **extra: Any) -> str:
    """
    Publish a start_workspace or stop_workspace call (no arguments) and return its id.
    """
    call_id = f"call_{new_id()[:16]}"
    data = {
        "tool_call_id": call_id,
        "chat_id": chat_id,
        "owner_id": OWNER_ID,
        "tool": tool,
        "arguments": {},
    } | extra
    await bus.publish("tool_calls", chat_id, "chat.tool_call.v1", data)
    return call_id


async def _build_command(bus: Bus, chat_id: str, count: int) -> dict[str, Any]:
    found = await bus.wait_for(
        "workspace_commands",
        lambda r: r.data["chat_id"] == chat_id and r.ce_type == "coder.workspace.build.v1",
        count=count,
    )
    return found[count - 1].data


async def _queued(bus: Bus, command: dict[str, Any]) -> dict[str, str]:
    """
    Answer a build command as Coder does: queued, with a new build and job.
    """
    data = command | {"build_id": new_id(), "job_id": new_id()}
    await bus.publish(
        "workspace_command_results", command["chat_id"], "coder.workspace.build_queued.v1", data
    )
    return data


async def _ready_chat(bus: Bus) -> tuple[str, dict[str, str]]:
    chat = new_id()
    call = await bus.tool_call(chat, name="dev")
    return chat, await _build_until_ready(bus, chat, call)


async def test_start_stop_without_a_workspace_answers_use_create_workspace_first(
    bus: Bus, running: RunningDaemon
) -> None:
    chat = new_id()
    start = await _call(bus, chat, "start_workspace")
    stop = await _call(bus, chat, "stop_workspace")
    for call, tool in ((start, "start_workspace"), (stop, "stop_workspace")):
        (result,) = await bus.results_for(call)
        assert result["tool"] == tool
        assert result["is_error"] is True
        assert result["content"] == {"error": "chat has no workspace; use create_workspace first"}
    assert bus.received["workspace_commands"] == []


async def test_start_stop_a_stop_then_a_start_answer_with_coders_shapes_and_build_ids(
    bus: Bus, running: RunningDaemon, db: asyncpg.Connection
) -> None:
    chat, ws = await _ready_chat(bus)
    stop = await _call(bus, chat, "stop_workspace")
    command = await _build_command(bus, chat, 1)
    assert command == {
        "command_id": command["command_id"],
        "chat_id": chat,
        "workspace_id": ws["workspace_id"],
        "transition": "stop",
    }
    queued = await _queued(bus, command)
    stop_build = ws | {"build_id": queued["build_id"]}
    await bus.job(stop_build, "succeeded", transition="stop", job_id=queued["job_id"])
    (stopped,) = await bus.results_for(stop)
    assert stopped["tool"] == "stop_workspace"
    assert stopped["content"] == {
        "stopped": True,
        "workspace_name": "alice/dev",
        "build_id": queued["build_id"],
    }
    assert await _state(db, chat) == "stopped"
    again = await _call(bus, chat, "stop_workspace")
    (at_once,) = await bus.results_for(again)
    assert at_once["content"] == {"stopped": True, "workspace_name": "alice/dev", "no_build": True}
    create = await bus.tool_call(chat)
    (told,) = await bus.results_for(create)
    assert told["content"]["message"] == "workspace is stopped; use start_workspace to start it"
    start = await _call(bus, chat, "start_workspace")
    command = await _build_command(bus, chat, 2)
    assert command["transition"] == "start"
    queued = await _queued(bus, command)
    agent = new_id()
    start_build = ws | {"build_id": queued["build_id"]}
    await bus.job(start_build, "succeeded", job_id=queued["job_id"], agents=[agent])
    await bus.wait_for(
        "workspace_events",
        lambda r: r.data["to_state"] == "agent_waiting" and r.data["agent_id"] == agent,
    )
    await bus.heartbeat(agent, ws["workspace_id"])
    (started,) = await bus.results_for(start)
    assert started["tool"] == "start_workspace"
    assert started["content"] == {
        "started": True,
        "workspace_name": "alice/dev",
        "build_id": queued["build_id"],
    }
    states = [
        (r.data["trigger"], r.data["to_state"])
        for r in bus.events_for(chat)
        if r.ce_type.endswith("state_changed.v1")
    ]
    assert states[-5:] == [
        ("stop_requested", "stopping"),
        ("build_succeeded", "stopped"),
        ("start_requested", "building"),
        ("build_succeeded", "agent_waiting"),
        ("agent_connected", "ready"),
    ]


async def test_start_stop_a_failed_stop_build_answers_workspace_stop_build_failed(
    bus: Bus, running: RunningDaemon
) -> None:
    chat, ws = await _ready_chat(bus)
    stop = await _call(bus, chat, "stop_workspace")
    queued = await _queued(bus, await _build_command(bus, chat, 1))
    build = ws | {"build_id": queued["build_id"]}
    await bus.job(build, "failed", transition="stop", job_id=queued["job_id"], error="boom")
    (result,) = await bus.results_for(stop)
    assert result["is_error"] is True
    assert result["content"] == {
        "error": "workspace stop build failed: boom",
        "build_id": queued["build_id"],
    }


async def test_start_stop_coders_refusal_is_the_error_and_the_workspace_stays_ready(
    bus: Bus, running: RunningDaemon, db: asyncpg.Connection
) -> None:
    chat, _ = await _ready_chat(bus)
    stop = await _call(bus, chat, "stop_workspace")
    command = await _build_command(bus, chat, 1)
    await bus.publish(
        "workspace_command_results",
        chat,
        "coder.workspace.build_rejected.v1",
        {
            "command_id": command["command_id"],
            "chat_id": chat,
            "status_code": 403,
            "message": "Forbidden.",
            "detail": "not yours",
        },
    )
    (result,) = await bus.results_for(stop)
    assert result["content"] == {"error": "Forbidden.: not yours"}
    await bus.wait_for("workspace_events", lambda r: r.data["trigger"] == "build_rejected")
    assert await _state(db, chat) == "ready"


async def test_start_stop_calls_of_three_tools_waiting_on_one_build_each_get_their_answer(
    bus: Bus, running: RunningDaemon, db: asyncpg.Connection
) -> None:
    chat = new_id()
    create = await bus.tool_call(chat, name="dev")
    (command,) = await bus.command_for(chat)
    ws = await bus.created(command)
    await bus.wait_for("workspace_events", lambda r: r.data["to_state"] == "building")
    stop = await _call(bus, chat, "stop_workspace")
    start = await _call(bus, chat, "start_workspace")
    await _waiting(db, chat, 3)
    agent = new_id()
    await bus.job(ws, "succeeded", agents=[agent])
    await bus.heartbeat(agent, ws["workspace_id"])
    (created,) = await bus.results_for(create)
    (started,) = await bus.results_for(start)
    assert created["content"] == {"created": True, "workspace_name": "alice/dev"}
    assert started["content"] == {
        "started": True,
        "workspace_name": "alice/dev",
        "build_id": ws["build_id"],
    }
    # Then, and only then, the stop: one command, after the create's build.
    command = await _build_command(bus, chat, 1)
    assert command["transition"] == "stop"
    queued = await _queued(bus, command)
    build = ws | {"build_id": queued["build_id"]}
    await bus.job(build, "succeeded", transition="stop", job_id=queued["job_id"])
    (stopped,) = await bus.results_for(stop)
    assert stopped["content"]["stopped"] is True
    assert len([r for r in bus.received["tool_results"] if r.data["chat_id"] == chat]) == 3


async def test_r12_a_heartbeat_before_a_followed_start_build_makes_the_chat_ready_at_once(
    bus: Bus, running: RunningDaemon, db: asyncpg.Connection
) -> None:
    chat, ws = await _ready_chat(bus)
    stop_job, start_job, new_agent = new_id(), new_id(), new_id()
    await bus.job(ws, "succeeded", transition="stop", job_id=stop_job)
    await bus.wait_for("workspace_events", lambda r: r.data["to_state"] == "stopped")
    # The new build's agent beats before its job update arrives (another topic).
    await bus.heartbeat(new_agent, ws["workspace_id"])
    seen = "SELECT count(*) FROM agents WHERE agent_id = $1"
    for _ in range(100):
        if await db.fetchval(seen, new_agent):
            break
        await asyncio.sleep(0.05)
    await bus.job(ws, "succeeded", job_id=start_job, agents=[new_agent])
    await bus.wait_for(
        "workspace_events",
        lambda r: r.data["to_state"] == "ready" and r.data["agent_id"] == new_agent,
    )
    assert await _state(db, chat) == "ready"
