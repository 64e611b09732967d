"""
Two daemon instances racing for one chat, made to race on purpose (issue 9, item 6).

Both ``workspaced run`` processes hold partitions of ``chat.tool_calls``; the
test sends a call for one new chat to every partition, holds the chat's row
(an uncommitted insert of it) until a batch of each instance waits on it,
then lets go: both apply their calls at the same moment, whatever the timing
of the machine. Nothing is waited for by sleeping.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson
import pytest

from consumers import codec, kafka
from tests.bus import OWNER_ID, TEMPLATE_ID, Bus, new_id
from tests.conftest import Services, make_settings
from tests.test_timers_watermarks import _env
from workspaced.settings import Settings

pytestmark = pytest.mark.e2e


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s} s for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
def instances(tmp_path: Path) -> Iterator[Callable[[Settings], Path]]:
    """
    Start ``workspaced run`` processes; return the path of each one's log.
    """
    started: list[subprocess.Popen[bytes]] = []

    def start(conf: Settings) -> Path:
        path = tmp_path / f"run-{len(started)}.log"
        with path.open("wb") as log:
            started.append(
                subprocess.Popen(
                    [sys.executable, "-m", "workspaced.cli", "run"],
                    env=_env(conf),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        return path

    yield start
    for proc in started:
        proc.send_signal(signal.SIGTERM)
    for proc in started:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _assigned(log: Path) -> int | None:
    """
    Return how many partitions the instance was last assigned, or None before its first assignment.
    """
    count = None
    for line in log.read_bytes().splitlines():
        if line.startswith(b"{"):
            event = orjson.loads(line)
            if event.get("event") == "partitions_assigned":
                count = event["partitions"]
            elif event.get("event") == "partitions_revoked":
                count = None
    return count


async def _send_call(bus: Bus, chat: str, partition: int) -> str:
    call = f"call_{uuid.uuid4().hex[:16]}"
    data = {
        "tool_call_id": call,
        "chat_id": chat,
        "owner_id": OWNER_ID,
        "tool": "create_workspace",
        "arguments": {"template_id": TEMPLATE_ID, "name": "dev"},
    }
    headers = codec.encode_headers("test", new_id(), "chat.tool_call.v1", datetime.now(UTC))
    await bus.producer.send_and_wait(
        bus.conf.topic("tool_calls"),
        orjson.dumps(data),
        key=chat.encode(),
        headers=headers,
        partition=partition,
    )
    return call


async def test_two_instances_applying_calls_for_one_new_chat_at_once_create_it_once(
    services: Services, database_url: str, db: asyncpg.Connection, instances: Callable[..., Path]
) -> None:
    conf = make_settings(services, database_url)
    migrated = subprocess.run(
        [sys.executable, "-m", "workspaced.cli", "migrate"],
        env=_env(conf),
        capture_output=True,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stderr.decode()
    await kafka.ensure_topics(conf.kafka_config())
    partitions = 4 * conf.topic_partitions
    async with Bus(conf) as bus:
        logs = [instances(conf), instances(conf)]

        async def both_hold_partitions() -> bool:
            counts = [_assigned(log) for log in logs]
            return all(counts) and sum(c or 0 for c in counts) == partitions

        await _until(both_hold_partitions, "both instances to share every partition")

        chat = new_id()
        holder = db.transaction()
        await holder.start()
        try:
            # The chat's row, not committed: every batch that creates it waits on it.
            await db.execute(
                "INSERT INTO chat_workspaces (chat_id, owner_id, state, state_entered_at,"
                " created_at, updated_at) VALUES ($1, $2, 'none', now(), now(), now())",
                chat,
                OWNER_ID,
            )
            calls = [await _send_call(bus, chat, p) for p in range(conf.topic_partitions)]
            watcher = await asyncpg.connect(database_url)
            try:

                async def a_batch_of_each_instance_waits() -> bool:
                    # One batch in flight per instance: two backends wait.
                    waiting = await watcher.fetchval(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                    return bool(waiting == 2)

                await _until(a_batch_of_each_instance_waits, "a batch of each instance to wait")
            finally:
                await watcher.close()
        finally:
            await holder.rollback()  # both go at once

        (command,) = await bus.command_for(chat, timeout_s=60)
        ws = await bus.created(command)
        agent = new_id()
        await bus.job(ws, "succeeded", agents=[agent])
        await bus.heartbeat(agent, ws["workspace_id"])
        answers = [(await bus.results_for(call, timeout_s=60))[0] for call in calls]
        assert sorted(a["content"].get("created") for a in answers) == [False] * 3 + [True]
        assert len(await bus.command_for(chat)) == 1
        creators = await db.fetchval(
            "SELECT count(*) FROM tool_calls WHERE chat_id = $1 AND creator", chat
        )
        assert creators == 1
        versions = await db.fetch(
            "SELECT version FROM workspace_transitions WHERE chat_id = $1 ORDER BY version", chat
        )
        assert [r["version"] for r in versions] == list(range(1, len(versions) + 1))
