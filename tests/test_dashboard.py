"""
The live page (``workspaced dashboard``) in a real headless Chromium, and its event stream.

The browser is Debian's ``chromium`` (``make system-deps`` installs it), driven by
Playwright. Every dashboard here connects as a login granted only
``workspaced_reader``, so every query it makes is proven read-only. Set
``WORKSPACED_SCREENSHOT_DIR=docs`` to refresh ``docs/dashboard.png``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from playwright.async_api import Browser, Dialog, Page, async_playwright, expect

from tests.bus import Bus, new_id
from tests.conftest import RunningDaemon
from tests.test_reader_role import TO_READY, reader_login, seed_call, seed_chat
from workspaced import dashboard

CHROMIUM = Path(os.environ.get("WORKSPACED_TEST_CHROMIUM", "/usr/bin/chromium"))
HOSTILE = "<img src=x onerror=alert(1)>"
WAIT_MS = 20_000

BUILD_FAILS = (("tool_call", "creating", 0.0), ("create_accepted", "building", 1.5))
FAILED = (*BUILD_FAILS, ("build_failed", "failed", 40.0))


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if shutil.which(str(CHROMIUM)) is None:
        pytest.fail(
            f"no executable Chromium at {CHROMIUM}: run `make system-deps` (as root it installs Debian's "
            "chromium package), or point WORKSPACED_TEST_CHROMIUM at a Chromium binary"
        )
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        await launched.close()


@dataclass
class Viewer:
    page: Page
    dialogs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # console errors (CSP too), page errors


@pytest.fixture
async def viewer(browser: Browser) -> AsyncIterator[Viewer]:
    context = await browser.new_context(viewport={"width": 1440, "height": 1000})
    seen = Viewer(await context.new_page())

    async def on_dialog(dialog: Dialog) -> None:
        seen.dialogs.append(dialog.message)
        await dialog.dismiss()

    seen.page.on("dialog", on_dialog)
    seen.page.on("console", lambda m: seen.problems.append(m.text) if m.type == "error" else None)
    seen.page.on("pageerror", lambda e: seen.problems.append(str(e)))
    yield seen
    await context.close()
    assert seen.dialogs == []
    assert seen.problems == []


@pytest.fixture
async def reader_url(database_url: str) -> AsyncIterator[str]:
    async with reader_login(database_url) as url:
        yield url


@pytest.fixture
async def board(reader_url: str) -> AsyncIterator[dashboard.Dashboard]:
    async with dashboard.Dashboard(reader_url) as running:
        yield running


def count(page: Page, state: str) -> Any:
    return page.locator(f'#counts [data-state="{state}"] .count')


async def test_the_page_shows_counts_stuck_chats_durations_stale_agents_and_history(
    db: asyncpg.Connection, board: dashboard.Dashboard, viewer: Viewer
) -> None:
    now = datetime.now(UTC)
    # Oldest first, as the daemon would have written them.
    stuck = await seed_chat(
        db,
        BUILD_FAILS,
        ended_s_ago=700,
        workspace_name="big",
        owner_name="dan",
        deadline_at=now - timedelta(seconds=95),
    )
    await seed_call(db, stuck, answered=False)
    for ago in (420, 400, 380):
        await seed_chat(db, TO_READY, ended_s_ago=ago, workspace_name="dev", owner_name="alice")
    await seed_chat(
        db,
        FAILED,
        ended_s_ago=60,
        workspace_name="ml",
        owner_name="carol",
        reason="terraform apply: exit status 1",
        last_error="terraform apply: exit status 1",
    )
    await seed_chat(
        db, TO_READY, workspace_name="api", owner_name="bob", agent_id=str(uuid.uuid4())
    )
    page = viewer.page
    await page.goto(board.url)

    for state, chats in (("none", 0), ("building", 1), ("ready", 4), ("failed", 1)):
        await expect(count(page, state)).to_have_text(str(chats))
    await expect(page.locator("#waiting-calls .count")).to_have_text("1")
    await expect(page.locator("#stuck tbody tr")).to_have_count(1)
    await expect(page.locator("#stuck tbody tr")).to_contain_text("dan/big")
    await expect(page.locator("#stale tbody tr")).to_contain_text("bob/api")
    await expect(page.locator("#stale tbody tr")).to_contain_text("never")
    durations = page.locator("#durations tbody tr")
    await expect(durations).to_have_count(3)  # creating, building, agent_waiting were left
    await expect(durations.filter(has_text="building")).to_contain_text(
        "30.0 s"
    )  # p50 of 30, 30, 30, 30, 40
    await expect(page.locator("#latest tbody tr")).to_have_count(4 * 4 + 3 + 2)
    await expect(page.locator("#latest tbody tr").first).to_contain_text("bob/api")
    await expect(page.locator("#live")).to_have_class("on")

    await page.fill("#q", stuck[:8])
    await page.press("#q", "Enter")
    await expect(page.locator("#chat-history tbody tr")).to_have_count(2)
    await _screenshot(page)


async def _screenshot(page: Page) -> None:
    folder = os.environ.get("WORKSPACED_SCREENSHOT_DIR")
    if folder:
        await page.screenshot(path=str(Path(folder) / "dashboard.png"), full_page=True)


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


async def test_a_transition_made_by_the_daemon_appears_without_reloading(
    bus: Bus, running: RunningDaemon, board: dashboard.Dashboard, viewer: Viewer
) -> None:
    page = viewer.page
    await page.goto(board.url)
    await expect(page.locator("#live")).to_have_class("on")
    await expect(count(page, "ready")).to_have_text("0")
    await page.evaluate("window.loadedOnce = true")
    chat = new_id()

    await bus.tool_call(chat, name="dev")
    row = page.locator(f'#latest tbody tr[data-chat="{chat}"]')
    await expect(row.first).to_contain_text("tool_call", timeout=WAIT_MS)
    await _play_coder_until_ready(bus, chat)

    await expect(count(page, "ready")).to_have_text("1", timeout=WAIT_MS)
    await expect(row).to_have_count(4, timeout=WAIT_MS)
    await expect(row.first).to_contain_text("agent_connected")
    await expect(row.first).to_contain_text("alice/dev")
    assert await page.evaluate("window.loadedOnce") is True  # the same page, never reloaded
    assert board.notifications > 0


async def test_a_search_finds_a_chat_by_its_first_characters_and_follows_it_live(
    db: asyncpg.Connection, board: dashboard.Dashboard, viewer: Viewer
) -> None:
    chat = await seed_chat(db, BUILD_FAILS, workspace_name="dev", owner_name="alice")
    await seed_call(db, chat, answered=False)
    twins = [f"abcdef01-0000-4000-8000-00000000000{i}" for i in (1, 2)]
    for twin in twins:
        await seed_chat(db, TO_READY, chat_id=twin)
    page = viewer.page
    await page.goto(board.url)

    await page.fill("#q", chat[:8])
    await page.press("#q", "Enter")
    await expect(page.locator('#chat-fields [data-field="state"]')).to_contain_text("building")
    await expect(page.locator('#chat-fields [data-field="workspace"]')).to_have_text("alice/dev")
    history = page.locator("#chat-history tbody tr")
    await expect(history).to_have_count(2)
    await expect(history.nth(1)).to_contain_text("create_accepted")
    await expect(page.locator("#chat-calls tbody tr")).to_contain_text("waiting")
    assert page.url.endswith(f"#chat={chat}")

    # A new transition of the chat shown updates it in place.
    async with db.transaction():
        await db.execute(
            "INSERT INTO workspace_transitions (chat_id, from_state, to_state, trigger, event_id,"
            " version, occurred_at, detail) VALUES ($1, 'building', 'failed', 'build_failed',"
            " 'e3', 3, now(), '{\"reason\": \"out of disk\"}')",
            chat,
        )
        await db.execute(
            "UPDATE chat_workspaces SET state = 'failed', version = 3, last_error = 'out of disk'"
            " WHERE chat_id = $1",
            chat,
        )
        await db.execute("NOTIFY workspaced_outbox")
    await expect(history).to_have_count(3)
    await expect(page.locator('#chat-fields [data-field="last error"]')).to_have_text("out of disk")

    await page.fill("#q", "abcdef01")
    await page.press("#q", "Enter")
    await expect(page.locator("#matches tbody tr")).to_have_count(2)
    await page.locator("#matches a.chat").first.click()
    await expect(page.locator('#chat-fields [data-field="chat"]')).to_have_text(twins[0])

    await page.fill("#q", "0123abcd")
    await page.press("#q", "Enter")
    await expect(page.locator("#chat")).to_have_text("No chat id starts with 0123abcd.")


async def test_a_hostile_workspace_name_and_error_are_shown_as_text(
    db: asyncpg.Connection, board: dashboard.Dashboard, viewer: Viewer
) -> None:
    error = "<script>alert(2)</script>"
    chat = await seed_chat(
        db,
        FAILED,
        workspace_name=HOSTILE,
        owner_name="<b>eve</b>",
        last_error=error,
        reason="<img src=y onerror=alert(3)>",
    )
    await seed_chat(
        db, BUILD_FAILS, workspace_name=HOSTILE, deadline_at=datetime.now(UTC) - timedelta(1)
    )
    page = viewer.page
    await page.goto(board.url)

    row = page.locator(f'#latest tbody tr[data-chat="{chat}"]').first
    await expect(row.locator("td.name")).to_have_text(f"<b>eve</b>/{HOSTILE}")
    await expect(row.locator("td.reason")).to_have_text("<img src=y onerror=alert(3)>")
    await expect(page.locator("#stuck td.name")).to_have_text(HOSTILE)
    await page.fill("#q", chat)
    await page.press("#q", "Enter")
    await expect(page.locator('#chat-fields [data-field="last error"]')).to_have_text(error)
    await expect(page.locator('#chat-fields [data-field="workspace"]')).to_have_text(
        f"<b>eve</b>/{HOSTILE}"
    )
    # Nothing was parsed as markup: no image (whose onerror would run), no bold, no script.
    assert await page.locator("body img, body b, main script").count() == 0


@dataclass
class Stream:
    """
    Read one Server-Sent Events stream of the dashboard, as a browser's EventSource does.
    """

    response: aiohttp.ClientResponse
    snapshots: list[Any] = field(default_factory=list)

    async def until(self, match: Callable[[Any], bool], timeout_s: float = 20.0) -> Any:
        if self.snapshots and match(self.snapshots[-1]):
            return self.snapshots[-1]
        name, data = "message", []
        async with asyncio.timeout(timeout_s):
            async for raw in self.response.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event:"):
                    name = line.removeprefix("event:").strip()
                elif line.startswith("data:"):
                    data.append(line.removeprefix("data:").lstrip())
                elif not line and data:
                    if name == "snapshot":
                        self.snapshots.append(orjson.loads("\n".join(data)))
                        if match(self.snapshots[-1]):
                            return self.snapshots[-1]
                    name, data = "message", []
        raise AssertionError("the event stream ended")


@contextlib.asynccontextmanager
async def streams(url: str, viewers: int) -> AsyncIterator[list[Stream]]:
    async with aiohttp.ClientSession() as http:
        opened = [await http.get(url + "api/events") for _ in range(viewers)]
        try:
            yield [Stream(r) for r in opened]
        finally:
            for r in opened:
                r.close()


def chats(snapshot: Any) -> int:
    return sum(c["chats"] for c in snapshot["counts"])


async def _dashboard_sessions(db: asyncpg.Connection) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT application_name, count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name LIKE 'workspaced-dashboard%'"
        " GROUP BY 1"
    )
    return {r[0]: r[1] for r in rows}


async def test_one_listen_connection_feeds_every_viewer_and_a_burst_becomes_few_refreshes(
    db: asyncpg.Connection, board: dashboard.Dashboard
) -> None:
    burst = 40
    async with streams(board.url, 3) as viewers:
        for v in viewers:
            await v.until(lambda s: chats(s) == 0)
        seen = [len(v.snapshots) for v in viewers]
        before, started = board.refreshes, time.monotonic()
        for _ in range(burst):  # 40 transactions, 40 NOTIFYs
            await seed_chat(db, TO_READY)
        for v in viewers:
            await v.until(lambda s: chats(s) == burst)
        elapsed_s = time.monotonic() - started
        refreshes = board.refreshes - before
        sessions = await _dashboard_sessions(db)
    assert board.notifications >= burst
    assert refreshes <= elapsed_s / 0.25 + 2, (refreshes, elapsed_s)
    assert refreshes < burst
    print(f"{burst} NOTIFYs in {elapsed_s:.2f} s: {refreshes} refreshes")
    # Each viewer got at most every refresh, plus one already on its way before the burst.
    assert all(len(v.snapshots) - n <= refreshes + 1 for v, n in zip(viewers, seen, strict=True))
    assert sessions["workspaced-dashboard-listen"] == 1
    assert sessions.get("workspaced-dashboard", 0) <= 3


async def test_the_dashboard_listens_again_after_losing_its_connection(
    db: asyncpg.Connection, reader_url: str
) -> None:
    # A tick longer than the test: only a NOTIFY can bring the new chat.
    async with (
        dashboard.Dashboard(reader_url, tick_s=300) as board,
        streams(board.url, 1) as (stream,),
    ):
        await stream.until(lambda s: chats(s) == 0)
        first = await db.fetchval(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database()"
            " AND application_name = 'workspaced-dashboard-listen'"
        )
        assert first is True
        deadline = time.monotonic() + 20
        while (await _dashboard_sessions(db)).get("workspaced-dashboard-listen") != 1:
            assert time.monotonic() < deadline, "the dashboard never listened again"
            await asyncio.sleep(0.05)
        await seed_chat(db, TO_READY)
        await stream.until(lambda s: chats(s) == 1)


async def test_the_api_refuses_bad_ids_and_sends_a_strict_content_security_policy(
    board: dashboard.Dashboard,
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(board.url) as page:
            text = await page.text()
            policy = page.headers["Content-Security-Policy"]
            assert page.headers["X-Content-Type-Options"] == "nosniff"
        nonce = re.search(r"script-src 'nonce-([^']+)'", policy)
        assert nonce is not None
        assert f'<script nonce="{nonce[1]}">' in text
        assert "unsafe-inline" not in policy
        for path, status in (
            ("api/chats/not-a-chat", 400),
            (f"api/chats/{uuid.uuid4()}", 404),
            ("api/chats?q=<zz>", 400),
            ("api/chats?q=ABCDEF-01", 200),
            ("api/snapshot", 200),
        ):
            async with http.get(board.url + path) as response:
                assert response.status == status, path
                assert response.content_type == "application/json"


async def test_serve_listens_on_the_given_port_until_stopped(reader_url: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stop = asyncio.Event()
    serving = asyncio.create_task(dashboard.serve(reader_url, "127.0.0.1", port, stop))
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 20
        while True:
            assert not serving.done(), serving
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with http.get(f"http://127.0.0.1:{port}/api/snapshot") as response:
                    assert response.status == 200
                    break
            assert time.monotonic() < deadline, "serve() never answered"
            await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(serving, 10)
