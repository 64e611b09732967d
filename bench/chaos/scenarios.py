"""
The chaos scenarios on real processes: kills, services going away, an outage, backend kills.

Each returns a plain dict (figures, invariants, examples) for ``report``. An
invariant holds when its value is 0; a ``known`` one is a failure another
change is fixing, reported but only failing the run with ``--strict``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import orjson

from bench.chaos import diagnose, ledger, stack, workload
from bench.chaos.services import ChaosServices, wait_accepting
from bench.harness import say

# Far longer than any run: every timeout answer is then a false one.
LONG_TIMEOUTS = {
    "build_timeout_seconds": 3600.0,
    "agent_connect_timeout_seconds": 3600.0,
    "create_timeout_seconds": 3600.0,
    "agent_inactivity_timeout_seconds": 3600.0,
}


def invariant(name: str, value: float, *, known: bool = False, note: str = "") -> dict[str, Any]:
    return {"name": name, "value": value, "ok": value == 0, "known": known, "note": note}


def call_invariants(t: ledger.Tally, *, known_timeouts: bool = False) -> list[dict[str, Any]]:
    note = "issue 9 item 1: timers fire before the backlog is read" if known_timeouts else ""
    return [
        invariant("lost answers", t.lost),
        invariant("duplicate answers (other content)", t.duplicate_answers),
        invariant("duplicate create commands", t.duplicate_creates),
        invariant("chats stuck in a non-terminal state", t.stuck),
        invariant("false timeouts", t.false_timeouts, known=known_timeouts, note=note),
        invariant("wrong answers (error vs success)", t.wrong_answers),
    ]


def call_figures(t: ledger.Tally) -> dict[str, Any]:
    return {
        "tool calls (distinct ids)": t.calls,
        "answered": t.answered,
        "repeated answers, same content (R14 allows)": t.repeated_answers,
    }


def result(name: str, title: str, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "scenario": name,
        "title": title,
        "params": params,
        "figures": {},
        "invariants": [],
        "examples": {},
        "notes": [],
    }


async def sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


async def send_plan(st: stack.Stack, plan: workload.Plan, t0: float) -> None:
    """
    Publish every call of the plan at its time; each send retries while the broker is away.
    """
    sends = []
    for call in plan.calls:
        await sleep_until(t0 + call.at_s)
        st.sent_at.setdefault(call.tool_call_id, time.monotonic())
        sends.append(asyncio.create_task(st.call(call)))
    await asyncio.gather(*sends)


async def settle(
    st: stack.Stack, plan: workload.Plan, out: dict[str, Any], timeout_s: float
) -> None:
    """
    Wait until every call is answered and everything is read; note what did not happen in time.
    """
    wanted = set(plan.tool_call_ids())

    async def answered() -> bool:
        return wanted <= {a.tool_call_id for a in st.tap.answers()}

    try:
        await stack.until(answered, timeout_s, "every call to be answered", 0.2)
    except TimeoutError as exc:
        out["notes"].append(str(exc))
    try:
        await st.quiesce(timeout_s / 2)
    except TimeoutError as exc:
        out["notes"].append(str(exc))


async def finish(
    st: stack.Stack,
    plan: workload.Plan,
    out: dict[str, Any],
    *,
    since: float | None,
    timeout_is_false: Callable[[ledger.Answer], bool] | None = None,
    known_timeouts: bool = False,
) -> ledger.Tally:
    tally = ledger.tally(
        plan.tool_call_ids(),
        st.tap.answers(),
        st.tap.commands(),
        await st.states(),
        expects_error=plan.expects_error,
        timeout_is_false=timeout_is_false,
    )
    out["figures"] |= call_figures(tally)
    waits = ledger.waits(st.tap.answers(), st.sent_at)
    if waits:
        out["figures"]["answer time p50 (s)"] = round(waits[len(waits) // 2], 2)
        out["figures"]["answer time max (s)"] = round(waits[-1], 1)
    if since is not None and tally.last_answer_at is not None:
        out["figures"]["last answer, after the last fault (s)"] = round(
            max(0.0, tally.last_answer_at - since), 1
        )
    out["invariants"] += call_invariants(tally, known_timeouts=known_timeouts)
    out["invariants"].append(
        invariant("unexpected daemon exits", st.fleet.unexpected_exits("daemon"))
    )
    dead = st.tap.seen["dead_letters"]
    out["invariants"].append(invariant("valid records dead-lettered", len(dead)))
    out["figures"]["simulator restarts (not the daemon)"] = st.fleet.unexpected_exits("simulator")
    out["examples"] |= {k: v for k, v in tally.examples.items() if v}
    if dead:
        reasons = [f"{s.last_header('dlq_topic')}: {s.last_header('dlq_reason')}" for s in dead]
        out["examples"]["dead-lettered"] = reasons[:3]
    if st.fleet.exit_examples():
        out["examples"]["unexpected exits"] = st.fleet.exit_examples()[:3]
    trouble = list(dict.fromkeys(tally.stuck_chats + tally.lost_chats))
    if trouble:
        out["examples"]["where it stopped"] = await diagnose.explain(st, trouble)
        out["figures"]["uncommitted input partitions at the end"] = len(
            await diagnose.group_lag(st)
        )
    return tally


async def kills(
    svc: ChaosServices, chats: int, kills: int, window_s: float, seed: int
) -> dict[str, Any]:
    """
    Two daemons and the simulator; SIGKILL either daemon at random moments and restart it.
    """
    params = {"chats": chats, "kills": kills, "window_s": window_s, "instances": 2}
    title = f"{chats} chats, 2 daemons, {kills} SIGKILLs of either one"
    out = result("kills", title, params)
    rng = random.Random(seed)
    async with stack.stack(svc, "kills", **LONG_TIMEOUTS) as st:
        st.add_simulator()
        daemons = [st.add_daemon(1), st.add_daemon(2)]
        out["figures"]["both daemons serving after (s)"] = round(await st.wait_served(), 1)
        plan = workload.plan(chats, window_s, rng)
        moments = sorted(rng.uniform(0.05, 0.95) * window_s for _ in range(kills))
        t0 = time.monotonic()
        sender = asyncio.create_task(send_plan(st, plan, t0))
        last_kill = None
        for at in moments:
            await sleep_until(t0 + at)
            victim = rng.choice(daemons)
            victim.kill()
            last_kill = time.monotonic()
            await asyncio.sleep(rng.uniform(0, 1.0))
            victim.start()
        await sender
        await settle(st, plan, out, 60 + chats / 20)
        await finish(st, plan, out, since=last_kill)
        out["figures"]["SIGKILLs"] = sum(d.kills for d in daemons)
    return out


async def _pg_outage(svc: ChaosServices, down_s: float, out: dict[str, Any]) -> None:
    orphans = await asyncio.to_thread(svc.kill_postgres)
    say(f"   PostgreSQL postmaster SIGKILLed ({orphans} backends had to be killed too)")
    await asyncio.sleep(down_s)
    took = await asyncio.to_thread(svc.start_postgres_again)
    ready = await wait_accepting(svc.pg.url)
    out["figures"]["PostgreSQL restart, until it answers (s)"] = round(took + ready, 1)


async def _broker_outage(svc: ChaosServices, down_s: float, out: dict[str, Any]) -> None:
    await asyncio.to_thread(svc.kill_broker)
    say("   Apache Kafka SIGKILLed")
    await asyncio.sleep(down_s)
    took = await asyncio.to_thread(svc.start_broker_again)
    out["figures"]["Apache Kafka restart, until it listens (s)"] = round(took, 1)


async def services_restart(
    svc: ChaosServices, chats: int, window_s: float, down_s: float, seed: int
) -> dict[str, Any]:
    """
    PostgreSQL SIGKILLed and restarted in place mid-run, then the broker (Apache Kafka only).
    """
    params = {"chats": chats, "window_s": window_s, "down_s": down_s, "instances": 2}
    title = f"{chats} chats; PostgreSQL, then the broker, killed and restarted mid-run"
    out = result("services", title, params)
    rng = random.Random(seed)
    async with stack.stack(svc, "services", durable_commits=True, **LONG_TIMEOUTS) as st:
        st.add_simulator()
        st.add_daemon(1)
        st.add_daemon(2)
        await st.wait_served()
        plan = workload.plan(chats, window_s, rng)
        t0 = time.monotonic()
        sender = asyncio.create_task(send_plan(st, plan, t0))
        await sleep_until(t0 + 0.3 * window_s)
        await _pg_outage(svc, down_s, out)
        last_fault = time.monotonic()
        await sleep_until(t0 + 0.65 * window_s)
        if svc.broker_restartable:
            await _broker_outage(svc, down_s, out)
            last_fault = time.monotonic()
        else:
            reason = "broker restart skipped: Tansu keeps topics in memory, a restart loses them"
            say(f"   {reason}")
            out["notes"].append(reason)
        await sender
        await settle(st, plan, out, 60 + chats / 20)
        await finish(st, plan, out, since=last_fault)
    return out


async def _building(st: stack.Stack, chats: set[str]) -> list[Any]:
    rows = await st.db(
        "SELECT chat_id::text AS chat_id, state, job_id::text AS job_id,"
        " extract(epoch FROM deadline_at - now()) AS left_s FROM chat_workspaces"
    )
    return [r for r in rows if r["chat_id"] in chats]


def _finished_at(st: stack.Stack, jobs: dict[str, str]) -> dict[str, float]:
    """
    Return when the tap saw each chat's build finish: its agent's first heartbeat, or success.
    """
    succeeded: dict[str, tuple[float, list[str]]] = {}
    for s in st.tap.seen["provisioner_job_updates"]:
        data = orjson.loads(s.value or b"{}")
        if data.get("status") == "succeeded" and data.get("job_id") in jobs:
            agents = [a["id"] for a in data.get("agents") or []]
            succeeded.setdefault(jobs[data["job_id"]], (s.at, agents))
    beats: dict[str, float] = {}
    for s in st.tap.seen["agent_heartbeats"]:
        beats.setdefault(orjson.loads(s.value or b"{}").get("agent_id"), s.at)
    done = {}
    for chat, (at, agents) in succeeded.items():
        if not agents:
            done[chat] = at
        elif agents[0] in beats:
            done[chat] = max(at, beats[agents[0]])
    return done


async def outage(svc: ChaosServices, chats: int, timeout_s: float, seed: int) -> dict[str, Any]:
    """
    SIGKILL the only daemon while builds run; Coder finishes them; restart after the timeouts.
    """
    params = {"chats": chats, "build_and_agent_timeout_s": timeout_s}
    title = f"{chats} builds finish while the only daemon is down longer than their timeout"
    out = result("outage", title, params)
    roles = ("tool_results", "workspace_commands", "dead_letters")
    roles += ("provisioner_job_updates", "agent_heartbeats")
    timers = LONG_TIMEOUTS | {
        "build_timeout_seconds": timeout_s,
        "agent_connect_timeout_seconds": timeout_s,
    }
    rng = random.Random(seed)
    async with stack.stack(svc, "outage", roles, **timers) as st:
        st.add_simulator(job_step_s=timeout_s / 4, agent_connect_delay_s=timeout_s / 8)
        daemon = st.add_daemon(1)
        await st.wait_served()
        plan = workload.plan(chats, 0.5, rng, {"ok": 0.8, "noagent": 0.2}, redelivery_share=0)
        await send_plan(st, plan, time.monotonic())
        wanted = set(plan.outcomes)

        async def all_building() -> bool:
            rows = await _building(st, wanted)
            return sum(r["state"] == "building" for r in rows) == len(wanted)

        try:
            await stack.until(all_building, 30, "every chat to be building", 0.02)
        except TimeoutError as exc:
            out["notes"].append(str(exc))
        daemon.kill()
        killed_at = time.monotonic()
        rows = [r for r in await _building(st, wanted) if r["state"] == "building"]
        deadline = {r["chat_id"]: killed_at + float(r["left_s"]) for r in rows}
        jobs = {r["job_id"]: r["chat_id"] for r in rows}

        async def builds_done() -> bool:
            return len(_finished_at(st, jobs)) == len(jobs)

        await stack.until(builds_done, 4 * timeout_s, "the simulator to finish every build")
        done = _finished_at(st, jobs)
        before = sum(done[c] < deadline[c] for c in done)
        await sleep_until(killed_at + timeout_s + 2.0)  # the outage itself, not a wait for a state
        daemon.start()
        restarted_at = time.monotonic()
        out["figures"]["chats building when killed"] = len(rows)
        out["figures"]["of which finished before their deadline"] = before
        out["figures"]["outage (s)"] = round(restarted_at - killed_at, 1)
        await settle(st, plan, out, 120)

        def false(answer: ledger.Answer) -> bool:
            chat = answer.chat_id
            return chat in done and chat in deadline and done[chat] < deadline[chat]

        await finish(st, plan, out, since=restarted_at, timeout_is_false=false, known_timeouts=True)
    return out


_LAG = """
SELECT (SELECT count(*) FROM outbox),
       (SELECT count(*) FROM tool_calls WHERE answered_at IS NOT NULL)
"""
_TERMINATE = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND backend_type = 'client backend' AND application_name <> $1
"""


async def _terminate(st: stack.Stack, every_s: float, stop: asyncio.Event) -> dict[str, int]:
    """
    Terminate the daemons' connections each round; sample how far publishing lags deciding.
    """
    found = {"termination rounds": 0, "connections terminated": 0}
    found |= {"outbox rows, most seen": 0, "answers decided but not yet published, most seen": 0}
    while not stop.is_set():
        try:
            killed = await st.pool.fetchval(_TERMINATE, stack.APP_NAME, timeout=5)
            found["connections terminated"] += int(killed or 0)
            found["termination rounds"] += 1
            outbox, decided = await st.pool.fetchrow(_LAG, timeout=5)
        except stack.DB_ERRORS:
            await asyncio.sleep(every_s)
            continue
        published = len({a.tool_call_id for a in st.tap.answers()})
        found["outbox rows, most seen"] = max(found["outbox rows, most seen"], outbox)
        behind = max(0, decided - published)
        key = "answers decided but not yet published, most seen"
        found[key] = max(found[key], behind)
        await asyncio.sleep(every_s)
    return found


async def backends(
    svc: ChaosServices, chats: int, window_s: float, every_s: float, seed: int
) -> dict[str, Any]:
    """
    Terminate the daemons' PostgreSQL connections every ``every_s`` while calls flow.
    """
    params = {"chats": chats, "window_s": window_s, "every_s": every_s, "instances": 2}
    title = (
        f"{chats} chats while pg_terminate_backend hits the daemons every {every_s * 1000:.0f} ms"
    )
    out = result("backends", title, params)
    rng = random.Random(seed)
    async with stack.stack(svc, "backends", **LONG_TIMEOUTS) as st:
        st.add_simulator()
        st.add_daemon(1)
        st.add_daemon(2)
        await st.wait_served()
        plan = workload.plan(chats, window_s, rng)
        stop = asyncio.Event()
        terminator = asyncio.create_task(_terminate(st, every_s, stop))
        await send_plan(st, plan, time.monotonic())
        stop.set()
        out["figures"] |= await terminator
        stopped_at = time.monotonic()
        await settle(st, plan, out, 60 + chats / 20)
        await finish(st, plan, out, since=stopped_at)
    return out
