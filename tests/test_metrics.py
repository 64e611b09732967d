"""
Prometheus metrics, /healthz and /readyz of a real daemon, read over HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg

from devtools.services import process
from tests.bus import Bus, new_id
from tests.conftest import Services


def _sample(text: str, name: str, **labels: str) -> float:
    """
    Return the value of one sample of the Prometheus text format, 0 when absent.
    """
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    prefix = f"{name}{{{wanted}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


async def _get(url: str) -> tuple[int, Any]:
    """
    GET ``url``; (0, None) while nothing listens there yet.
    """
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.text()
    except aiohttp.ClientConnectorError:
        return 0, None


async def _until(check: Callable[[], Any], what: str, timeout_s: float = 30) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        found = await check()
        if found:
            return found
        if loop.time() > deadline:
            raise AssertionError(f"waited {timeout_s} s for {what}")
        await asyncio.sleep(0.05)


async def test_metrics_count_what_a_tool_call_did_and_the_probes_say_ready(
    daemon_with: Any,
) -> None:
    address = f"127.0.0.1:{process.free_port('127.0.0.1')}"
    _, bus = await daemon_with(metrics_address=address)
    base = f"http://{address}"

    async def listening() -> bool:
        return (await _get(f"{base}/healthz")) == (200, {"status": "alive"})

    await _until(listening, "the probes to listen")

    async def ready() -> bool:
        status, body = await _get(f"{base}/readyz")
        return status == 200 and all(c["ok"] for c in body["checks"].values())

    await _until(ready, "the daemon to be ready")
    # The registry is the process's: other daemons of this test run count too.
    _, before = await _get(f"{base}/metrics")
    chat = new_id()
    call = await bus.tool_call(chat, name="dev")
    (command,) = await bus.command_for(chat)
    ws = await bus.created(command)
    agent = new_id()
    await bus.job(ws, "succeeded", agents=[agent])
    await bus.heartbeat(agent, ws["workspace_id"])
    await bus.results_for(call)

    async def scraped() -> str | None:
        _, text = await _get(f"{base}/metrics")
        moved = _sample(
            text,
            "workspaced_transitions_total",
            from_state="none",
            to_state="creating",
            trigger="tool_call",
        )
        was = _sample(
            before,
            "workspaced_transitions_total",
            from_state="none",
            to_state="creating",
            trigger="tool_call",
        )
        return text if moved > was and _sample(text, "workspaced_relay_published_total") else None

    text = await _until(scraped, "the transitions to be counted")
    labels = {"tool": "create_workspace", "outcome": "created"}
    created = _sample(text, "workspaced_tool_results_total", **labels)
    assert created - _sample(before, "workspaced_tool_results_total", **labels) == 1
    assert _sample(text, "workspaced_tool_call_duration_seconds_count", tool="all") >= 1
    assert _sample(text, "workspaced_state_duration_seconds_count", state="building") >= 1
    assert _sample(text, "workspaced_batch_records_count") >= 1
    assert _sample(text, "workspaced_partitions_assigned") > 0
    assert _sample(text, "workspaced_relay_leader") == 1
    assert "workspaced_outbox_rows " in text
    assert "workspaced_timers_pending " in text
    consumed = _sample(
        text, "workspaced_events_consumed_total", topic="tool_calls", type="ToolCall"
    )
    assert consumed >= 1
    assert "chat_id" not in text  # no unbounded labels


async def test_readyz_says_which_check_fails_when_the_database_is_gone(
    daemon_with: Any, services: Services, database_url: str, bus: Bus
) -> None:
    address = f"127.0.0.1:{process.free_port('127.0.0.1')}"
    await daemon_with(metrics_address=address)
    base = f"http://{address}"

    async def ready() -> bool:
        status, _ = await _get(f"{base}/readyz")
        return status == 200

    await _until(ready, "the daemon to be ready")
    name = database_url.rpartition("/")[2]
    conn = await asyncpg.connect(services.server_url)
    try:
        await conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )

        async def not_ready() -> Any:
            status, body = await _get(f"{base}/readyz")
            return body if status == 503 else None

        body = await _until(not_ready, "readyz to say not ready")
        assert body["checks"]["postgresql"]["ok"] is False
        assert body["checks"]["postgresql"]["detail"] == "does not answer"
        assert body["status"] == "not ready"
        # Alive all the same: the loop answers.
        assert (await _get(f"{base}/healthz"))[0] == 200
    finally:
        await conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        await conn.close()
