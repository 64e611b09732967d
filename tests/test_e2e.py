"""
End to end: the real ``workspaced`` command as processes, talked to only through Kafka and the tables.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from consumers import kafka
from devtools.owners import owner_name
from tests.bus import OWNER_ID, Bus, new_id, workspace_for
from tests.conftest import Services, make_settings
from workspaced.settings import Settings

pytestmark = pytest.mark.e2e


def _env(conf: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKSPACED_")}
    logs = {"WORKSPACED_LOG_FORMAT": "json", "WORKSPACED_LOG_LEVEL": "info"}
    return env | conf.environment() | logs


class Processes:
    def __init__(self, conf: Settings, tmp: Path) -> None:
        self.conf = conf
        self.tmp = tmp
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        with (self.tmp / f"{args[0]}-{len(self.running)}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "workspaced.cli", *args],
                env=_env(self.conf),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.running.append(proc)
        return proc

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        index = self.running.index(proc)
        name = proc.args[3]  # type: ignore[index]
        return (self.tmp / f"{name}-{index}.log").read_text()

    def stop_all(self) -> None:
        for proc in self.running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.running:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
async def procs(
    services: Services, database_url: str, tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    made: list[tuple[Processes, Bus]] = []

    async def make(**overrides: Any) -> tuple[Processes, Bus, Settings]:
        conf = make_settings(services, database_url, **overrides)
        p = Processes(conf, tmp_path)
        result = subprocess.run(
            [sys.executable, "-m", "workspaced.cli", "migrate"],
            env=_env(conf),
            capture_output=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode()
        from consumers import kafka  # noqa: PLC0415

        await kafka.ensure_topics(conf.kafka_config())
        bus = await Bus(conf).__aenter__()
        made.append((p, bus))
        return p, bus, conf

    yield make
    for p, bus in made:
        p.stop_all()
        await bus.__aexit__(None, None, None)


async def _until(check: Callable[[], Any], what: str, timeout_s: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"waited {timeout_s} s for {what}")
        await asyncio.sleep(0.05)


def _assigned(p: Processes, proc: subprocess.Popen[bytes]) -> int:
    """
    Return how many partitions the instance's latest assignment gave it (from its log).
    """
    found = 0
    for line in p.output(proc).splitlines():
        if '"partitions_assigned"' in line:
            found = json.loads(line)["partitions"]
    return found


async def _all_assigned(p: Processes, *instances: subprocess.Popen[bytes]) -> bool:
    counts = [_assigned(p, i) for i in instances]
    return all(counts) and sum(counts) == len(kafka.INPUT_ROLES) * p.conf.topic_partitions


async def _settled(
    p: Processes, bus: Bus, db: asyncpg.Connection, roles: tuple[str, ...] = kafka.INPUT_ROLES
) -> None:
    """
    Wait until every input is committed, every output published and read: no late duplicate can come.
    """

    async def check() -> bool:
        if await db.fetchval("SELECT count(*) FROM outbox"):
            return False
        if await bus.group_lag(p.conf.consumer_group, roles):
            return False
        return await bus.caught_up()

    await _until(check, "inputs committed, outbox empty and outputs read")


async def _wait_exit(proc: subprocess.Popen[bytes], timeout_s: float = 30) -> int:
    for _ in range(int(timeout_s * 10)):
        code = proc.poll()
        if code is not None:
            return code
        await asyncio.sleep(0.1)
    raise AssertionError("process did not exit")


async def test_the_happy_path_through_the_real_daemon_and_simulator_processes(
    procs: Callable[..., Any], db: asyncpg.Connection
) -> None:
    p, bus, _ = await procs()
    daemon = p.start("run")
    p.start(
        "simulate",
        "--job-step-s",
        "0.1",
        "--agent-connect-delay-s",
        "0.1",
        "--heartbeat-interval-s",
        "1",
    )
    good, failing = new_id(), new_id()
    call_good = await bus.tool_call(good, name="dev")
    call_fail = await bus.tool_call(failing, name="fail-me")
    (ok,) = await bus.results_for(call_good, timeout_s=40)
    (bad,) = await bus.results_for(call_fail, timeout_s=40)
    # The simulator names each owner after its id (devtools.owners).
    assert ok["content"] == {"created": True, "workspace_name": f"{owner_name(OWNER_ID)}/dev"}
    assert bad["content"] == {"error": "workspace build failed: terraform apply: exit status 1"}
    states = dict(await db.fetch("SELECT chat_id::text, state FROM chat_workspaces"))
    assert states == {good: "ready", failing: "failed"}
    status = subprocess.run(
        [sys.executable, "-m", "workspaced.cli", "status"],
        env=_env(p.conf),
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert "ready" in status and "agent_waiting" in status and "latest" in status
    daemon.send_signal(signal.SIGTERM)
    assert await _wait_exit(daemon) == 0
    assert '"event": "daemon_stopped"' in p.output(daemon)


async def test_two_instances_in_one_group_send_exactly_one_create_per_chat(
    procs: Callable[..., Any], db: asyncpg.Connection
) -> None:
    p, bus, _ = await procs()
    first, second = p.start("run"), p.start("run")
    p.start(
        "simulate",
        "--job-step-s",
        "0.05",
        "--agent-connect-delay-s",
        "0.05",
        "--heartbeat-interval-s",
        "1",
    )
    await _until(lambda: _all_assigned(p, first, second), "both instances to share the inputs")
    chats = [new_id() for _ in range(20)]
    calls = await asyncio.gather(
        *(bus.tool_call(c, name=f"w{i}") for i, c in enumerate(chats) for _ in range(5))
    )
    for call in calls:
        assert len(await bus.results_for(call, timeout_s=60)) == 1
    # The simulator's agents beat on: every input but heartbeats is committed.
    await _settled(
        p, bus, db, ("tool_calls", "workspace_command_results", "provisioner_job_updates")
    )
    per_chat: dict[str, int] = {}
    for record in bus.received["workspace_commands"]:
        per_chat[record.data["chat_id"]] = per_chat.get(record.data["chat_id"], 0) + 1
    assert per_chat == dict.fromkeys(chats, 1)
    created = [r for r in bus.received["tool_results"] if r.data["content"].get("created") is True]
    assert len(created) == len(chats)
    assert await db.fetchval("SELECT count(*) FROM chat_workspaces WHERE state = 'ready'") == len(
        chats
    )


async def test_a_daemon_killed_mid_build_loses_nothing_duplicates_nothing_and_its_timers_still_fire(
    procs: Callable[..., Any], db: asyncpg.Connection
) -> None:
    p, bus, _ = await procs(agent_connect_timeout_seconds=3.0)
    daemon = p.start("run")
    building, waiting = new_id(), new_id()
    call_building = await bus.tool_call(building, name="alpha")
    call_waiting = await bus.tool_call(waiting, name="beta")
    commands = {c["chat_id"]: c for c in await bus.wait_for_data("workspace_commands", 2)}
    ws_a = await bus.created(commands[building])
    ws_b = await bus.created(commands[waiting])
    await bus.job(ws_b, "succeeded", agents=[new_id()])  # its agent never connects
    await bus.wait_for("workspace_events", lambda r: r.data["to_state"] == "agent_waiting")
    daemon.kill()  # SIGKILL: no chance to finish anything
    assert await _wait_exit(daemon) == -signal.SIGKILL
    agent = new_id()
    await bus.job(ws_a, "running")
    await bus.job(ws_a, "succeeded", agents=[agent])
    await bus.heartbeat(agent, ws_a["workspace_id"])
    # Beta's agent deadline passes while no daemon runs.
    passed = "SELECT deadline_at < now() FROM chat_workspaces WHERE chat_id = $1"
    await _until(lambda: db.fetchval(passed, waiting), "beta's agent deadline to pass")
    p.start("run")
    (a,) = await bus.results_for(call_building, timeout_s=30)
    (b,) = await bus.results_for(call_waiting, timeout_s=30)
    assert a["content"] == {
        "created": True,
        "workspace_name": "alice/alpha",
    }  # the bus answers as Coder
    assert b["content"]["agent_status"] == "not_ready"
    await _settled(p, bus, db)
    ids = [r.headers["ce_id"] for r in bus.received["tool_results"]]
    assert len(set(ids)) == 2, "one result per call, though a record may repeat"
    assert len(bus.received["workspace_commands"]) == 2
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0
    versions = await db.fetch(
        "SELECT chat_id, count(*) AS n, max(version) AS v FROM workspace_transitions GROUP BY chat_id"
    )
    assert all(r["n"] == r["v"] for r in versions), "every transition recorded once"


async def test_events_delivered_twice_and_out_of_order_end_in_the_same_state(
    procs: Callable[..., Any], db: asyncpg.Connection
) -> None:
    p, bus, _ = await procs()
    p.start("run")
    chat = new_id()
    call = await bus.tool_call(chat, name="dev")
    (command,) = await bus.command_for(chat)
    ws = workspace_for(command)
    agent = new_id()
    # Newest first, each twice with the same CloudEvent id.
    await bus.heartbeat(agent, ws["workspace_id"])
    for status in ("succeeded", "running", "pending"):
        ce_id = new_id()
        for _ in range(2):
            await bus.job(ws, status, agents=[agent], ce_id=ce_id)
    created = ws | {"workspace_name": "dev", "owner_name": "alice"}
    for _ in range(2):
        await bus.publish(
            "workspace_command_results", chat, "coder.workspace.created.v1", created, ce_id="c-1"
        )
    (result,) = await bus.results_for(call, timeout_s=30)
    assert result["content"] == {"created": True, "workspace_name": "alice/dev"}
    await _settled(p, bus, db)
    assert (
        await db.fetchval("SELECT state FROM chat_workspaces WHERE chat_id = $1", chat) == "ready"
    )
    assert (
        await db.fetchval("SELECT status FROM provisioner_jobs WHERE job_id = $1", ws["job_id"])
        == "succeeded"
    )
    assert len([r for r in bus.received["tool_results"] if r.data["tool_call_id"] == call]) == 1


async def test_a_bad_setting_stops_the_start_with_a_message_naming_it(services: Services) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKSPACED_")}
    env |= {
        "WORKSPACED_BUILD_TIMEOUT_SECONDS": "-5",
        "WORKSPACED_KAFKA_BOOTSTRAP_SERVERS": "nohost",
        "WORKSPACED_DATABASE_URL": "postgresql://u:hunter2@h/db",
    }
    result = subprocess.run(
        [sys.executable, "-m", "workspaced.cli", "run"], env=env, capture_output=True, check=False
    )
    err = result.stderr.decode()
    assert result.returncode == 2
    assert "build_timeout_seconds (WORKSPACED_BUILD_TIMEOUT_SECONDS)" in err
    assert "kafka_bootstrap_servers (WORKSPACED_KAFKA_BOOTSTRAP_SERVERS)" in err
    assert "hunter2" not in err
