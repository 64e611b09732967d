"""
The path through ``workspaced bridge``: Coder's change → tool result, and the bridge's own cost.

Each scenario serves a fake Coder (``devtools.fake_coder``) from this process
over real HTTP and runs the bridge as its own ``workspaced bridge`` process,
so its CPU and RSS are its own.

- ``bridge``: reaction latency. Chats go through the whole path (tool call →
  daemon → bridge → fake Coder → watch → daemon) to a waiting state, then the
  fake makes the deciding change at a recorded instant, and the tool result's
  arrival on ``chat.tool_results`` is timed. Next to it, in the same run: the
  Kafka-only path (the ``reaction`` scenario without its baseline, in its own
  stack) and the floor's two hops (a watch snapshot to a bare client in
  another process, one produce → consume).
- ``watching``: the bridge's RSS and CPU while it watches many workspaces.
  The workspaces are made in the fake directly (ready, agent connected) and
  bound in ``chat_workspaces`` by SQL; the bridge's lease sweep picks them up.

The fake, the bridge process and the floor's watch probe are in ``bench.bridgekit``.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from bench import bridgekit, harness, report, scenarios
from bench.harness import Stack, say
from consumers import codec
from devtools.fake_coder import FakeCoder, FakeCoderOptions
from devtools.fake_coder.provisioner import Timing
from devtools.fake_coder.state import Workspace
from workspaced.bridge import mapping

LONG_S = 3600.0  # a fake step that does not happen during a run

# -- chats through the whole path ---------------------------------------------------------------


async def tool_call(st: Stack, chat_id: str, name: str) -> Any:
    data = {
        "tool_call_id": f"call-{chat_id}",
        "chat_id": chat_id,
        "owner_id": harness.OWNER_ID,
        "tool": "create_workspace",
        "arguments": {"template_id": harness.TEMPLATE_ID, "name": name},
    }
    return await st.publish("tool_calls", chat_id, "chat.tool_call.v1", data)


async def bring_to(st: Stack, fake: FakeCoder, prefix: str, n: int, state: str) -> dict[str, str]:
    """
    Send ``n`` tool calls; wait until each chat is in ``state`` and its workspace watched.

    Return each chat's workspace id.
    """
    ids = [str(uuid.uuid4()) for _ in range(n)]
    for i, chat_id in enumerate(ids):
        await (await tool_call(st, chat_id, f"{prefix}-{i}"))
    chats: dict[str, str] = {}

    async def arrived() -> bool:
        rows = await st.pool.fetch(
            "SELECT chat_id::text, workspace_id::text FROM chat_workspaces"
            " WHERE state = $1 AND chat_id = ANY($2::uuid[])",
            state,
            ids,
        )
        chats.update({r["chat_id"]: r["workspace_id"] for r in rows})
        return len(chats) == n and set(chats.values()) <= bridgekit.watched(fake)

    await _until(arrived, 60 + n / 10, f"{n} chats in {state}, watched")
    return chats


async def _until(check: Any, timeout_s: float, what: str, every_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            msg = f"timed out after {timeout_s:.0f} s waiting for {what}"
            raise TimeoutError(msg)
        await asyncio.sleep(every_s)


async def react(
    st: Stack, chats: dict[str, str], window_s: float, change: Callable[[str], Awaitable[None]]
) -> dict[str, float]:
    """
    Make ``change(workspace_id)`` at random instants over ``window_s``; wait for every result.

    Return when each chat's change was made (wall clock).
    """
    changed_at: dict[str, float] = {}

    async def one(chat_id: str, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        changed_at[chat_id] = time.time()
        await change(chats[chat_id])

    began = time.monotonic()
    await asyncio.gather(*(one(c, began + random.uniform(0, window_s)) for c in chats))
    calls = {c: f"call-{c}" for c in chats}
    await st.tap.wait(
        lambda: all(calls[c] in st.tap.results for c in chats), 60, "every tool result"
    )
    errors = [c for c in chats if st.tap.results[calls[c]][1]["is_error"]]
    if errors:
        msg = f"{len(errors)} error results, e.g. {st.tap.results[calls[errors[0]]][1]}"
        raise RuntimeError(msg)
    return changed_at


def result_ms(st: Stack, changed_at: dict[str, float]) -> list[float]:
    """
    Return, per chat, the milliseconds from its change to its tool result at the tap.
    """
    return [(st.tap.results[f"call-{c}"][0] - at) * 1000 for c, at in changed_at.items()]


def legs_ms(
    st: Stack, fake: FakeCoder, chats: dict[str, str], changed_at: dict[str, float]
) -> dict[str, list[float]]:
    """
    Split each change → result interval at the agent's first heartbeat, in milliseconds.

    ``seen``: the change → the bridge stamping the heartbeat (its ``occurred_at``:
    the watch hop and the bridge's parse); ``published``: that stamp → the
    heartbeat at the benchmark's consumer; ``answered``: → the tool result there
    (the daemon's consume, transaction and relay, and the result's own hop).
    """
    legs: dict[str, list[float]] = {"seen": [], "published": [], "answered": []}
    for chat_id, at in changed_at.items():
        workspace = fake.world.workspaces[uuid.UUID(chats[chat_id])]
        beat_at, beat = st.tap.beats[str(workspace.latest_build.agents[0].id)]
        stamped = datetime.fromisoformat(beat["occurred_at"]).timestamp()
        legs["seen"].append((stamped - at) * 1000)
        legs["published"].append((beat_at - stamped) * 1000)
        legs["answered"].append((st.tap.results[f"call-{chat_id}"][0] - beat_at) * 1000)
    return legs


# -- the floor: one watch hop, one Kafka hop ----------------------------------------------------


async def kafka_hop(st: Stack, samples: int) -> list[float]:
    """
    Time records from the benchmark's producer to its tap (the consumer results are timed on).
    """
    sent: dict[str, float] = {}
    for _ in range(samples):
        key = f"hop-{uuid.uuid4()}"
        sent[key] = time.time()
        data = {"tool_call_id": key, "chat_id": key, "is_error": False, "content": {}}
        await (await st.publish("tool_results", key, "chat.tool_result.v1", data))
        await asyncio.sleep(random.uniform(0.01, 0.03))
    await st.tap.wait(lambda: all(k in st.tap.results for k in sent), 30, "the hop records")
    return [(st.tap.results[k][0] - at) * 1000 for k, at in sent.items()]


# -- 1. reaction through the bridge ----------------------------------------------------------------


async def kafka_only(svc: harness.Services, chats_n: int, window_s: float) -> list[float]:
    """
    The ``reaction`` scenario's path without its baseline: job ``succeeded`` published → result.
    """
    async with harness.stack(svc, "bridge-kafka") as st:
        chats = await scenarios.make_building(st, chats_n, heartbeats=True)
        by_id = {c.chat_id: c for c in chats}

        async def beat() -> None:
            while True:
                await asyncio.gather(*[await scenarios.heartbeat(st, c) for c in chats])
                await asyncio.sleep(5.0)

        async def succeed(chat_id: str) -> None:
            await (await scenarios.job_update(st, by_id[chat_id], "succeeded"))

        beats = asyncio.create_task(beat())
        try:
            changed = await react(st, {c.chat_id: c.chat_id for c in chats}, window_s, succeed)
        finally:
            beats.cancel()
        return result_ms(st, changed)


async def reaction(svc: harness.Services, chats_n: int, window_s: float) -> dict[str, Any]:
    """
    Time the fake Coder's deciding change to the tool result, through bridge and daemon.

    ``agent``: chats wait in ``agent_waiting`` (job succeeded, agent connecting);
    the agent connects. ``job``: chats wait in ``building`` (job running); the
    job succeeds with its agent already connected, in one snapshot.
    """
    say(f"  Kafka-only path: {chats_n} chats over {window_s:.0f} s")
    kafka_ms = await kafka_only(svc, chats_n, window_s)
    options = FakeCoderOptions(job_step_s=0.02, agent_connect_delay_s=LONG_S)
    roles = ("tool_results", "workspace_commands", "agent_heartbeats")
    async with (
        harness.stack(svc, "bridge", roles) as st,
        bridgekit.fake_coder(options) as fake,
        bridgekit.running_bridge(st, fake) as bridge,
    ):
        say(f"  {chats_n} chats to agent_waiting, {chats_n} to building, through the bridge")
        agent_waiting = await bring_to(st, fake, "agent", chats_n, "agent_waiting")
        fake.provisioner.timing = Timing(job_step_s=LONG_S, agent_connect_delay_s=LONG_S)
        building = await bring_to(st, fake, "job", chats_n, "building")
        for workspace_id in building.values():
            bridgekit.start_job(fake, workspace_id)
        await asyncio.sleep(1.0)  # the bridge has published "running"
        samples = chats_n
        say(f"  floor: {samples} watch hops, {samples} Kafka hops")
        ws_ms = await bridgekit.watch_hop(fake, samples)
        hop_ms = await kafka_hop(st, samples)

        async def connect(workspace_id: str) -> None:
            fake.connect_agent(uuid.UUID(workspace_id))

        async def succeed(workspace_id: str) -> None:
            bridgekit.succeed_with_agent(fake, workspace_id)

        say(f"  agents connect at random over {window_s:.0f} s")
        cpu0 = bridge.meter.cpu_s()
        connected = await react(st, agent_waiting, window_s, connect)
        say(f"  jobs succeed at random over {window_s:.0f} s")
        succeeded = await react(st, building, window_s, succeed)
        bridge_cpu_s = bridge.meter.cpu_s() - cpu0
        rss_mb = bridge.meter.rss() / 2**20
        agent_ms, job_ms = result_ms(st, connected), result_ms(st, succeeded)
        legs = {
            "agent": legs_ms(st, fake, agent_waiting, connected),
            "job": legs_ms(st, fake, building, succeeded),
        }
    floor = [a + b for a, b in zip(sorted(ws_ms), sorted(hop_ms), strict=False)]
    return {
        "chats": chats_n,
        "window_s": window_s,
        "agent_ms": scenarios.percentiles(agent_ms),
        "job_ms": scenarios.percentiles(job_ms),
        "kafka_only_ms": scenarios.percentiles(kafka_ms),
        "watch_hop_ms": scenarios.percentiles(ws_ms),
        "kafka_hop_ms": scenarios.percentiles(hop_ms),
        "floor_ms": scenarios.percentiles(floor),
        "legs_ms": {
            path: {leg: scenarios.percentiles(values) for leg, values in found.items()}
            for path, found in legs.items()
        },
        "bridge_cpu_s": bridge_cpu_s,
        "bridge_rss_mb": rss_mb,
        "samples_ms": {
            "agent": agent_ms,
            "job": job_ms,
            "kafka_only": kafka_ms,
            "watch_hop": ws_ms,
            "kafka_hop": hop_ms,
        },
    }


# -- 2. the bridge watching many workspaces ----------------------------------------------------

_BIND = """
INSERT INTO chat_workspaces
    (chat_id, owner_id, state, workspace_id, workspace_name, owner_name, build_id,
     job_id, agent_id, template_id, state_entered_at, version, created_at, updated_at)
SELECT gen_random_uuid(), $1::uuid, 'ready', w, n, 'admin', b, j, a, $2::uuid,
       now(), 4, now(), now()
FROM unnest($3::uuid[], $4::text[], $5::uuid[], $6::uuid[], $7::uuid[]) AS t(w, n, b, j, a)
"""


async def bind(st: Stack, workspaces: list[Workspace]) -> None:
    """
    Bind each workspace to a new ready chat, as the daemon would have.
    """
    for start in range(0, len(workspaces), 5000):
        part = workspaces[start : start + 5000]
        builds = [w.latest_build for w in part]
        await st.pool.execute(
            _BIND,
            harness.OWNER_ID,
            harness.TEMPLATE_ID,
            [w.id for w in part],
            [w.name for w in part],
            [b.id for b in builds],
            [b.job.id for b in builds],
            [b.agents[0].id for b in builds],
        )


async def _sample_until(
    meter: harness.ProcessMeter, have: Callable[[], int], want: int, timeout_s: float, what: str
) -> float:
    began = time.monotonic()
    while have() < want:
        meter.rss()
        if time.monotonic() - began > timeout_s:
            msg = f"timed out after {timeout_s:.0f} s waiting for {what}: {have()} of {want}"
            raise TimeoutError(msg)
        await asyncio.sleep(0.25)
    return time.monotonic() - began


async def _idle(
    bridge: bridgekit.Bridge, lag: harness.LagWatcher, seconds: float
) -> dict[str, float]:
    """
    Leave the bridge alone for ``seconds``; return its CPU, peak RSS and heartbeats published.
    """
    beats0 = sum((await lag.reader.end_offsets(lag.parts)).values())
    cpu0, began = bridge.meter.cpu_s(), time.monotonic()
    rss = []
    while time.monotonic() - began < seconds:
        rss.append(bridge.meter.rss())
        await asyncio.sleep(1.0)
    elapsed = time.monotonic() - began
    cpu = bridge.meter.cpu_s() - cpu0
    beats = sum((await lag.reader.end_offsets(lag.parts)).values()) - beats0
    return {
        "seconds": elapsed,
        "cpu_s": cpu,
        "cpu_percent": cpu / elapsed * 100,
        "rss_mb": max(rss) / 2**20,
        "heartbeats": beats,
        "heartbeats_per_s": beats / elapsed,
    }


def heartbeat_bytes() -> int:
    """
    Return the size of one heartbeat record as the bridge publishes it: value, key, headers.
    """
    agent_id, at = str(uuid.uuid4()), datetime.now(UTC)
    data = mapping.heartbeat(str(uuid.uuid4()), agent_id, "ready", at)
    headers = codec.encode_headers("workspaced-bridge", str(uuid.uuid4()), mapping.HEARTBEAT, at)
    return len(orjson.dumps(data)) + len(agent_id) + sum(len(k) + len(v) for k, v in headers)


async def watching(svc: harness.Services, watches_n: int, idle_s: float) -> dict[str, Any]:
    """
    The bridge's RSS and CPU while it watches ``watches_n`` ready workspaces.
    """
    topic_role = "agent_heartbeats"
    async with (
        harness.stack(svc, "watching", daemon=False) as st,
        bridgekit.fake_coder(FakeCoderOptions()) as fake,
        bridgekit.running_bridge(st, fake) as bridge,
        harness.LagWatcher(st.conf, st.conf.consumer_group, st.conf.topic(topic_role)) as lag,
    ):
        workspaces = [bridgekit.ready_workspace(fake, f"w-{i}") for i in range(watches_n)]
        await bind(st, workspaces[:1])
        await _sample_until(bridge.meter, lambda: fake.open_watches, 1, 60, "the first watch")
        await asyncio.sleep(2.0)
        say(f"  bridge up, 1 watch: idle for {max(5.0, idle_s / 3):.0f} s")
        floor = await _idle(bridge, lag, max(5.0, idle_s / 3))
        say(f"  binding {watches_n - 1} more")
        await bind(st, workspaces[1:])
        bridge.meter.peak_rss = 0
        ramp_s = await _sample_until(
            bridge.meter,
            lambda: fake.open_watches,
            watches_n,
            120 + watches_n / 50,
            f"{watches_n} open watches",
        )
        ramp_peak_mb = bridge.meter.peak_rss / 2**20
        await asyncio.sleep(2.0)
        say(f"  {watches_n} watches open in {ramp_s:.1f} s; idle for {idle_s:.0f} s")
        idle = await _idle(bridge, lag, idle_s)
        if os.environ.get("BENCH_BRIDGE_TRACEMALLOC"):
            bridge.managed.popen.send_signal(signal.SIGUSR1)
            await asyncio.sleep(20)
        requests = fake.counters
    added_cpu_s = idle["cpu_s"] - floor["cpu_percent"] / 100 * idle["seconds"]
    return {
        "watches": watches_n,
        "ramp_s": ramp_s,
        "floor": floor,
        "idle": idle,
        "rss_ramp_peak_mb": ramp_peak_mb,
        "rss_mb": idle["rss_mb"],
        "rss_per_watch_kb": (idle["rss_mb"] - floor["rss_mb"]) * 1024 / max(1, watches_n - 1),
        "cpu_us_per_heartbeat": (
            added_cpu_s / idle["heartbeats"] * 1e6 if idle["heartbeats"] else None
        ),
        "heartbeat_bytes": heartbeat_bytes(),
        "watch_reads": requests.count("GET", "/api/v2/workspaces/{workspace}"),
        "watch_connects": requests.count("GET", "/api/v2/workspaces/{workspace}/watch-ws"),
    }


# -- tables --------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def reaction_table(r: dict[str, Any]) -> str:
    def row(label: str, key: str, goal: str = "") -> tuple[str, ...]:
        p = r[key]
        return (label, _num(p.get("p50")), _num(p.get("p95")), _num(p.get("p99")), goal)

    def leg(label: str, path: str, name: str) -> tuple[str, ...]:
        p = r["legs_ms"][path][name]
        return (label, _num(p.get("p50")), _num(p.get("p95")), _num(p.get("p99")), "")

    rows = [
        row("agent connects in the fake → tool result", "agent_ms", "≤ 25 / ≤ 60"),
        leg("  · → the bridge has parsed it", "agent", "seen"),
        leg("  · → its heartbeat at a consumer", "agent", "published"),
        leg("  · → the tool result at a consumer", "agent", "answered"),
        row("job succeeds, agent connected → tool result", "job_ms", "≤ 25 / ≤ 60"),
        leg("  · → the bridge has parsed it", "job", "seen"),
        leg("  · → its heartbeat at a consumer", "job", "published"),
        leg("  · → the tool result at a consumer", "job", "answered"),
        row("Kafka-only: job succeeded published → tool result", "kafka_only_ms"),
        row("floor: fake change → snapshot in a bare client", "watch_hop_ms"),
        row("floor: produce → consume (acks=all)", "kafka_hop_ms"),
        row("floor: the two hops, summed by rank", "floor_ms"),
    ]
    title = (
        f"Reaction through the bridge: {r['chats']} chats per row, changes at random over"
        f" {r['window_s']:.0f} s (bridge CPU {r['bridge_cpu_s']:.1f} s,"
        f" RSS {r['bridge_rss_mb']:.0f} MB)"
    )
    return report.table(title, rows, ("interval (ms)", "p50", "p95", "p99", "goal p50 / p99"))


def watching_table(r: dict[str, Any]) -> str:
    n, idle, floor = r["watches"], r["idle"], r["floor"]
    rows: list[tuple[str, ...]] = [
        ("RSS (MB)", _num(r["rss_mb"]), "≤ 200", _num(floor["rss_mb"])),
        ("RSS per watch (KB)", _num(r["rss_per_watch_kb"]), "", ""),
        ("RSS peak while opening them (MB)", _num(r["rss_ramp_peak_mb"]), "", ""),
        ("seconds to open them all", _num(r["ramp_s"]), "", ""),
        ("CPU while idle (%)", _num(idle["cpu_percent"], 2), "", _num(floor["cpu_percent"], 2)),
        ("heartbeats repeated per s", _num(idle["heartbeats_per_s"]), "", ""),
        ("CPU above the floor per heartbeat (µs)", _num(r["cpu_us_per_heartbeat"], 0), "", ""),
        ("bytes per heartbeat record", str(r["heartbeat_bytes"]), "", ""),
        ("workspace reads / watch connects", f"{r['watch_reads']:,} / {r['watch_connects']:,}"),
    ]
    rows[-1] += ("", "")
    title = (
        f"The bridge watching {n:,} ready workspaces (agents connected),"
        f" idle {idle['seconds']:.0f} s (floor: {floor['seconds']:.0f} s)"
    )
    return report.table(title, rows, ("metric", f"{n:,} watches", "goal", "floor: 1 watch"))


def goals(results: dict[str, Any]) -> str:
    lines = ["Goals through the bridge (measured, not asserted)"]

    def check(label: str, ok: bool, measured: str) -> None:
        lines.append(f"  [{'met' if ok else 'NOT met':^7}] {label}: {measured}")

    if "bridge" in results:
        r = results["bridge"]
        for key, what in (("agent_ms", "agent connects"), ("job_ms", "job succeeds")):
            p = r[key]
            check(f"{what} → result p50 ≤ 25 ms", p["p50"] <= 25, f"{p['p50']:.1f} ms")
            check(f"{what} → result p99 ≤ 60 ms", p["p99"] <= 60, f"{p['p99']:.1f} ms")
    if "watching" in results:
        w = results["watching"]
        check(
            f"bridge RSS ≤ 200 MB watching {w['watches']:,}",
            w["rss_mb"] <= 200,
            f"{w['rss_mb']:.0f} MB",
        )
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    parts = []
    if "bridge" in results:
        parts.append(reaction_table(results["bridge"]))
    if "watching" in results:
        parts.append(watching_table(results["watching"]))
    if parts:
        parts.append(goals(results))
    return "\n\n".join(parts)
