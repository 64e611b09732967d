"""
The five scenarios: reaction latency, waiting cost, throughput, heartbeat ingest, growth.

Each returns a plain dict of its measurements (and raw samples) for the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench import harness
from bench.harness import Stack, say


@dataclass(frozen=True)
class Chat:
    chat_id: str
    tool_call_id: str
    workspace_id: str
    build_id: str
    job_id: str
    agent_id: str


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]

    return {
        "n": len(ordered),
        "p50": pick(0.50),
        "p95": pick(0.95),
        "p99": pick(0.99),
        "max": ordered[-1],
        "mean": sum(ordered) / len(ordered),
    }


class BaselineProcess:
    """
    The baseline pollers in their own process, so their CPU and memory can be measured.
    """

    def __init__(self, proc: asyncio.subprocess.Process, out: Path) -> None:
        self.proc = proc
        self.out = out
        self.meter = harness.ProcessMeter(proc.pid)

    @classmethod
    async def start(cls, dsn: str, name: str) -> BaselineProcess:
        out = harness.RESULTS / "logs" / f"{name}-baseline.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.baseline",
            "--dsn",
            dsn,
            "--out",
            str(out),
            stdin=asyncio.subprocess.PIPE,
            cwd=harness.ROOT,
            start_new_session=True,
            preexec_fn=harness.die_with_parent,
        )
        return cls(proc, out)

    def feed(self, chat_id: str, job_id: str) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.write(f"{chat_id} {job_id}\n".encode())

    async def close_input(self) -> None:
        if self.proc.stdin is not None:
            await self.proc.stdin.drain()
            self.proc.stdin.close()

    async def finish(self, timeout_s: float, *, terminate: bool = False) -> dict[str, Any]:
        if terminate and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if not self.out.exists():
            return {"noticed": {}, "outcomes": {}, "polls": 0}
        result: dict[str, Any] = orjson.loads(self.out.read_bytes())
        return result

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def _gather_sends(futures: list[Any]) -> None:
    if futures:
        await asyncio.gather(*futures)
    futures.clear()


async def _until(check: Any, timeout_s: float, what: str, every_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            msg = f"timed out after {timeout_s:.0f} s waiting for {what}"
            raise TimeoutError(msg)
        await asyncio.sleep(every_s)


async def heartbeat(st: Stack, chat: Chat) -> Any:
    data = {
        "agent_id": chat.agent_id,
        "workspace_id": chat.workspace_id,
        "lifecycle_state": "ready",
        "occurred_at": harness.now_iso(),
    }
    return await st.publish("agent_heartbeats", chat.agent_id, "coder.agent.heartbeat.v1", data)


async def job_update(st: Stack, chat: Chat, status: str) -> Any:
    data: dict[str, Any] = {
        "job_id": chat.job_id,
        "workspace_id": chat.workspace_id,
        "build_id": chat.build_id,
        "transition": "start",
        "status": status,
        "occurred_at": harness.now_iso(),
    }
    if status == "succeeded":
        data["agents"] = [{"id": chat.agent_id, "name": "main"}]
    return await st.publish(
        "provisioner_job_updates", chat.workspace_id, "coder.provisioner_job.updated.v1", data
    )


async def make_building(st: Stack, n: int, *, heartbeats: bool) -> list[Chat]:
    """
    Bring ``n`` chats to ``building`` by playing Coder: accept each create, run its job.
    """
    ids = [str(uuid.uuid4()) for _ in range(n)]
    futures = [await st.tool_call(c, f"call-{c}") for c in ids]
    await _gather_sends(futures)
    await st.tap.wait(
        lambda: all(c in st.tap.commands for c in ids), 60 + n / 20, f"{n} create commands"
    )
    chats = []
    for chat_id in ids:
        command = st.tap.commands[chat_id]
        chat = Chat(chat_id, f"call-{chat_id}", *(str(uuid.uuid4()) for _ in range(4)))
        chats.append(chat)
        created = {
            "command_id": command["command_id"],
            "chat_id": chat_id,
            "workspace_id": chat.workspace_id,
            "workspace_name": command["name"],
            "owner_name": "alice",
            "build_id": chat.build_id,
            "job_id": chat.job_id,
        }
        futures.append(
            await st.publish(
                "workspace_command_results", chat_id, "coder.workspace.created.v1", created
            )
        )
        futures.append(await job_update(st, chat, "running"))
        if heartbeats:
            futures.append(await heartbeat(st, chat))
    await _gather_sends(futures)

    async def ready() -> bool:
        building = await st.count(
            "SELECT count(*) FROM chat_workspaces WHERE state = 'building' AND chat_id = ANY($1)",
            [uuid.UUID(c) for c in ids],
        )
        agents = await st.count("SELECT count(*) FROM agents") if heartbeats else n
        jobs = await st.count("SELECT count(*) FROM provisioner_jobs")
        return building == n and agents >= n and jobs >= n

    await _until(ready, 60 + n / 20, f"{n} chats in building")
    return chats


async def _keep_beating(st: Stack, chats: list[Chat], every_s: float) -> None:
    while True:
        futures = [await heartbeat(st, c) for c in chats]
        await _gather_sends(futures)
        await asyncio.sleep(every_s)


# -- 1. reaction latency ------------------------------------------------------------------


async def reaction(svc: harness.Services, chats_n: int, window_s: float) -> dict[str, Any]:
    """
    Time from a job's ``succeeded`` being published to the chat's tool result (agent live).
    """
    async with harness.stack(svc, "reaction") as st:
        chats = await make_building(st, chats_n, heartbeats=True)
        beats = asyncio.create_task(_keep_beating(st, chats, 5.0))
        baseline = await BaselineProcess.start(st.dsn, "reaction")
        try:
            for chat in chats:
                baseline.feed(chat.chat_id, chat.job_id)
            await baseline.close_input()
            await asyncio.sleep(1.0)  # every baseline task is polling by now
            sent_at: dict[str, float] = {}

            async def finish(chat: Chat, at: float) -> None:
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                sent_at[chat.chat_id] = time.time()
                await (await job_update(st, chat, "succeeded"))

            began = time.monotonic()
            await asyncio.gather(*(finish(c, began + random.uniform(0, window_s)) for c in chats))
            await st.tap.wait(
                lambda: all(c.tool_call_id in st.tap.results for c in chats),
                60,
                "every tool result",
            )
            report = await baseline.finish(30)
        finally:
            beats.cancel()
            await baseline.kill()
    ours = [st.tap.results[c.tool_call_id][0] - sent_at[c.chat_id] for c in chats]
    theirs = [
        report["noticed"][c.chat_id] - sent_at[c.chat_id]
        for c in chats
        if c.chat_id in report["noticed"]
    ]
    contents = [st.tap.results[c.tool_call_id][1] for c in chats]
    created = sum(1 for r in contents if not r["is_error"] and r["content"].get("created"))
    return {
        "chats": chats_n,
        "window_s": window_s,
        "workspaced_ms": percentiles([x * 1000 for x in ours]),
        "baseline_ms": percentiles([x * 1000 for x in theirs]),
        "workspaced_samples_ms": [x * 1000 for x in ours],
        "baseline_samples_ms": [x * 1000 for x in theirs],
        "created_true": created,
        "baseline_outcomes": _count(report["outcomes"].values()),
    }


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


# -- 2. waiting cost ----------------------------------------------------------------------


async def _hold(st: Stack, meter: harness.ProcessMeter, hold_s: float) -> dict[str, float]:
    calls0, commits0 = await harness.statements(st.pool)
    cpu0 = meter.cpu_s()
    began = time.monotonic()
    rss = []
    while time.monotonic() - began < hold_s:
        rss.append(meter.rss())
        await asyncio.sleep(min(1.0, hold_s - (time.monotonic() - began)))
    elapsed = time.monotonic() - began
    calls1, commits1 = await harness.statements(st.pool)
    return {
        "seconds": elapsed,
        "statements": calls1 - calls0,
        "statements_per_s": (calls1 - calls0) / elapsed,
        "commits_per_s": (commits1 - commits0) / elapsed,
        "cpu_s": meter.cpu_s() - cpu0,
        "rss_mb": max([*rss, meter.rss()]) / 2**20,
    }


async def waiting(svc: harness.Services, chats_n: int, hold_s: float) -> dict[str, Any]:
    """
    Statements, CPU and memory while ``chats_n`` chats wait in ``building``.
    """
    async with harness.stack(svc, "waiting") as st:
        assert st.daemon is not None
        chats = await make_building(st, chats_n, heartbeats=False)
        await asyncio.sleep(1.0)
        say(f"  holding {chats_n} chats in building for {hold_s:.0f} s (workspaced)")
        ours = await _hold(st, st.daemon.meter, hold_s)
        baseline = await BaselineProcess.start(st.dsn, "waiting")
        try:
            for chat in chats:
                baseline.feed(chat.chat_id, chat.job_id)
            await baseline.close_input()
            await asyncio.sleep(2.5)  # past the first poll of every task
            say(f"  holding {chats_n} chats in building for {hold_s:.0f} s (baseline)")
            theirs = await _hold(st, baseline.meter, hold_s)
            report = await baseline.finish(15, terminate=True)
        finally:
            await baseline.kill()
    for side in (ours, theirs):
        side["statements_per_chat_min"] = side["statements_per_s"] * 60 / chats_n
    theirs["polls"] = report["polls"]
    return {"chats": chats_n, "hold_s": hold_s, "workspaced": ours, "baseline": theirs}


# -- 3. throughput ------------------------------------------------------------------------


async def _probe(st: Stack) -> None:
    chat_id = str(uuid.uuid4())
    await (await st.tool_call(chat_id, f"probe-result-{chat_id}"))
    await st.tap.wait(
        lambda: f"probe-result-{chat_id}" in st.tap.results, 90, "the simulator to join"
    )


async def _burst(st: Stack, n: int, baseline: BaselineProcess | None = None) -> dict[str, Any]:
    """
    Publish ``n`` tool calls as fast as possible; wait for every tool result.
    """
    ids = [str(uuid.uuid4()) for _ in range(n)]
    calls = {c: f"call-{c}" for c in ids}
    wanted = set(ids)
    if baseline is not None:

        def on_created(data: dict[str, Any]) -> None:
            if data["chat_id"] in wanted:
                baseline.feed(data["chat_id"], data["job_id"])

        st.tap.on_created = on_created
    assert st.daemon is not None
    cpu0 = st.daemon.meter.cpu_s()
    sent: dict[str, float] = {}
    first = time.time()
    futures = []
    for c in ids:
        sent[c] = time.time()
        futures.append(await st.tool_call(c, calls[c]))
        if len(futures) >= 2000:
            await _gather_sends(futures)
    await _gather_sends(futures)
    published = time.time()
    await st.tap.wait(
        lambda: all(calls[c] in st.tap.results for c in ids), 120 + n / 20, f"{n} tool results"
    )
    last = max(st.tap.results[calls[c]][0] for c in ids)
    out: dict[str, Any] = {
        "chats": n,
        "seconds": last - first,
        "chats_per_s": n / (last - first),
        "publish_s": published - first,
        "errors": sum(1 for c in ids if st.tap.results[calls[c]][1]["is_error"]),
        "latency_ms": percentiles([(st.tap.results[calls[c]][0] - sent[c]) * 1000 for c in ids]),
        "latency_samples_ms": [(st.tap.results[calls[c]][0] - sent[c]) * 1000 for c in ids],
        "daemon_cpu_s": st.daemon.meter.cpu_s() - cpu0,
        "daemon_rss_mb": st.daemon.meter.rss() / 2**20,
    }
    if baseline is not None:
        await st.tap.wait(lambda: all(c in st.tap.created for c in ids), 60, "every created event")
        await baseline.close_input()
        report = await baseline.finish(60 + n / 100)
        st.tap.on_created = None
        noticed = [report["noticed"][c] for c in ids if c in report["noticed"]]
        lat = [(report["noticed"][c] - sent[c]) * 1000 for c in ids if c in report["noticed"]]
        out["baseline"] = {
            "chats": len(noticed),
            "seconds": (max(noticed) - first) if noticed else None,
            "chats_per_s": len(noticed) / (max(noticed) - first) if noticed else None,
            "latency_ms": percentiles(lat),
            "latency_samples_ms": lat,
            "outcomes": _count(report["outcomes"].values()),
            "polls": report["polls"],
            "cpu_s": baseline.meter.cpu_s(),
            "rss_mb": baseline.meter.peak_rss / 2**20,
        }
    return out


async def throughput(
    svc: harness.Services, chats_n: int, *, profile_to: Path | None = None
) -> dict[str, Any]:
    """
    Chats per second from tool call to tool result, Coder simulated with zero delays.
    """
    roles = ("tool_results", "workspace_commands", "workspace_command_results")
    async with harness.stack(svc, "throughput", roles, profile_to=profile_to) as st:
        st.start_simulator()
        await _probe(st)
        say(f"  {chats_n} chats through workspaced")
        ours = await _burst(st, chats_n)
        if profile_to is not None:
            return {"workspaced": ours}
        say(f"  {chats_n} chats through workspaced + baseline waiting")
        baseline = await BaselineProcess.start(st.dsn, "throughput")
        try:
            with_baseline = await _burst(st, chats_n, baseline)
        finally:
            await baseline.kill()
    return {"chats": chats_n, "workspaced": ours, "baseline_pass": with_baseline}


# -- 4. heartbeat ingest ------------------------------------------------------------------


async def _publish_beats(st: Stack, agents: list[tuple[str, str]], beats_n: int) -> float:
    """
    Publish ``beats_n`` heartbeats round-robin over ``agents`` as fast as possible.
    """
    futures = []
    for i in range(beats_n):
        agent_id, workspace_id = agents[i % len(agents)]
        data = {
            "agent_id": agent_id,
            "workspace_id": workspace_id,
            "lifecycle_state": "ready",
            "occurred_at": harness.now_iso(),
        }
        futures.append(
            await st.publish("agent_heartbeats", agent_id, "coder.agent.heartbeat.v1", data)
        )
        if len(futures) >= 5000:
            await _gather_sends(futures)
            if st.daemon is not None:
                st.daemon.meter.rss()
    await _gather_sends(futures)
    return time.time()


async def _until_no_lag(st: Stack, watcher: harness.LagWatcher, beats_n: int) -> float:
    deadline = time.monotonic() + 300 + beats_n / 1000
    while True:
        lag, _ = await watcher.lag()
        if st.daemon is not None:
            st.daemon.meter.rss()
        if lag == 0:
            return time.time()
        if time.monotonic() > deadline:
            msg = f"heartbeat lag still {lag}"
            raise TimeoutError(msg)
        await asyncio.sleep(0.05)


async def heartbeats(svc: harness.Services, agents_n: int, beats_n: int) -> dict[str, Any]:
    """
    Heartbeats per second absorbed, until the daemon's group lag is zero.

    Live: published as fast as possible while the daemon runs (one process on
    two cores publishes, so the publisher may be the limit). Backlog: published
    first, then the daemon drains them; timed from its first commit.
    """
    agents = [(str(uuid.uuid4()), str(uuid.uuid4())) for _ in range(agents_n)]
    async with harness.stack(svc, "heartbeats") as st:
        assert st.daemon is not None
        topic = st.conf.topic("agent_heartbeats")
        async with harness.LagWatcher(st.conf, st.conf.consumer_group, topic) as watcher:
            cpu0 = st.daemon.meter.cpu_s()
            first = time.time()
            published = await _publish_beats(st, agents, beats_n)
            done = await _until_no_lag(st, watcher, beats_n)
        live = {
            "seconds": done - first,
            "per_s": beats_n / (done - first),
            "publish_per_s": beats_n / (published - first),
            "drain_after_publish_s": done - published,
            "agents_stored": await st.count("SELECT count(*) FROM agents"),
            "daemon_cpu_s": st.daemon.meter.cpu_s() - cpu0,
            "daemon_rss_mb": st.daemon.meter.peak_rss / 2**20,
        }
    async with harness.stack(svc, "heartbeats-backlog", daemon=False) as st:
        topic = st.conf.topic("agent_heartbeats")
        await _publish_beats(st, agents, beats_n)
        async with harness.LagWatcher(st.conf, st.conf.consumer_group, topic) as watcher:
            daemon = st.start_daemon()
            while True:
                _, committed = await watcher.lag()
                if committed > 0 or not daemon.managed.alive():
                    break
                await asyncio.sleep(0.02)
            began, cpu0 = time.time(), daemon.meter.cpu_s()
            done = await _until_no_lag(st, watcher, beats_n)
        backlog = {
            "seconds": done - began,
            "per_s": (beats_n - committed) / (done - began),
            "first_commit_records": committed,
            "agents_stored": await st.count("SELECT count(*) FROM agents"),
            "daemon_cpu_s": daemon.meter.cpu_s() - cpu0,
            "daemon_rss_mb": daemon.meter.peak_rss / 2**20,
        }
    return {"agents": agents_n, "heartbeats": beats_n, **live, "backlog": backlog}


# -- 5. growth ----------------------------------------------------------------------------

_PREFILL = """
WITH made AS (
    INSERT INTO chat_workspaces
        (chat_id, owner_id, state, workspace_id, workspace_name, owner_name, build_id,
         job_id, agent_id, template_id, state_entered_at, version, created_at, updated_at)
    SELECT gen_random_uuid(), $2::uuid, 'ready', gen_random_uuid(), 'bench-' || g, 'alice',
           gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), $3::uuid, now(), 4,
           now(), now()
    FROM generate_series(1, $1::int) AS g
    RETURNING workspace_id, build_id, job_id, agent_id
), jobs AS (
    INSERT INTO provisioner_jobs
        (job_id, workspace_id, build_id, transition, status, agents, occurred_at)
    SELECT job_id, workspace_id, build_id, 'start', 'succeeded',
           jsonb_build_array(jsonb_build_object('id', agent_id, 'name', 'main')), now()
    FROM made
)
INSERT INTO agents (agent_id, workspace_id, lifecycle_state, last_seen_at)
SELECT agent_id, workspace_id, 'ready', now() FROM made
"""


async def growth(svc: harness.Services, tracked: list[int], new_n: int) -> dict[str, Any]:
    """
    Throughput of ``new_n`` new chats, and daemon RSS, as the number of tracked chats grows.
    """
    roles = ("tool_results", "workspace_commands")
    steps = []
    async with harness.stack(svc, "growth", roles) as st:
        assert st.daemon is not None
        st.start_simulator()
        await _probe(st)
        for target in sorted(tracked):
            have = await st.count("SELECT count(*) FROM chat_workspaces")
            fill = max(0, target - new_n - have)
            began = time.monotonic()
            for start in range(0, fill, 50_000):
                size = min(50_000, fill - start)
                await st.pool.execute(_PREFILL, size, harness.OWNER_ID, harness.TEMPLATE_ID)
            await st.pool.execute("ANALYZE")
            say(
                f"  {target} tracked: pre-filled {fill} rows in {time.monotonic() - began:.1f} s,"
                f" then {new_n} new chats"
            )
            burst = await _burst(st, new_n)
            steps.append(
                {
                    "tracked": await st.count("SELECT count(*) FROM chat_workspaces"),
                    "target": target,
                    "chats_per_s": burst["chats_per_s"],
                    "latency_ms": burst["latency_ms"],
                    "daemon_rss_mb": burst["daemon_rss_mb"],
                    "daemon_cpu_s": burst["daemon_cpu_s"],
                    "errors": burst["errors"],
                }
            )
    return {"new_chats": new_n, "steps": steps}
