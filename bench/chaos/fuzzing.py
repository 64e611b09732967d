"""
The fuzz scenario: malformed records on every input topic, then valid calls.

Every record must be dead-lettered, answered with an error result, or accepted
as the contract says (``fuzz``); afterwards the daemon must still answer valid
calls and its group must have committed every input partition to its end.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from typing import Any

from aiokafka.errors import KafkaError

from bench.chaos import fuzz, ledger, scenarios, stack, workload
from bench.chaos.services import ChaosServices
from bench.harness import say

SEND_CHUNK = 200
# About Apache Kafka's default message.max.bytes (1,048,588): Tansu takes larger
# records, so a dead letter too large for Kafka would go unnoticed there but for this.
BROKER_DEFAULT_MAX_BYTES = 1_048_576


async def _send_all(
    st: stack.Stack, records: list[fuzz.FuzzRecord], out: dict[str, Any]
) -> list[tuple[fuzz.FuzzRecord, tuple[str, int, int]]]:
    """
    Publish the records in order (a pair of one key stays in order); note any the broker refuses.
    """
    sent = []
    refused: Counter[str] = Counter()
    for start in range(0, len(records), SEND_CHUNK):
        chunk = records[start : start + SEND_CHUNK]
        futures = []
        for r in chunk:
            topic = st.conf.topic(r.role)
            futures.append(
                await st.producer.send(topic, r.value, key=r.key, headers=list(r.headers))
            )
        for r, done in zip(
            chunk, await asyncio.gather(*futures, return_exceptions=True), strict=True
        ):
            if isinstance(done, KafkaError | Exception):
                refused[f"{r.kind}: {type(done).__name__}"] += 1
                continue
            sent.append((r, (st.conf.topic(r.role), done.partition, done.offset)))
    if refused:
        out["notes"].append(f"refused by the broker, not counted: {dict(refused)}")
    return sent


async def _observed(st: stack.Stack) -> ledger.Observed:
    dead: Counter[tuple[str, int, int]] = Counter()
    for s in st.tap.seen["dead_letters"]:
        topic, part, offset = (
            s.last_header(h) for h in ("dlq_topic", "dlq_partition", "dlq_offset")
        )
        if topic is not None and part is not None and offset is not None:
            dead[(topic, int(part), int(offset))] += 1
    results: dict[str, list[bool]] = defaultdict(list)
    for a in st.tap.answers():
        results[a.tool_call_id].append(a.is_error)
    inbox = {r["id"] for r in await st.db("SELECT id FROM inbox WHERE source = $1", fuzz.SOURCE)}
    agents = {r["agent_id"] for r in await st.db("SELECT agent_id::text FROM agents")}
    return ledger.Observed(dead, results, inbox, agents)


async def _stuck_partitions(st: stack.Stack) -> int:
    parts = st.input_partitions()
    ends = await st.tap.reader.end_offsets(parts)
    committed = await st.admin.list_consumer_group_offsets(st.conf.consumer_group, partitions=parts)
    stuck = 0
    for tp in parts:
        meta = committed.get(tp)
        done = meta.offset if meta is not None and meta.offset >= 0 else 0
        stuck += done < ends[tp]
    return stuck


def _dead_letter_sizes(st: stack.Stack, out: dict[str, Any]) -> None:
    """
    Note the largest dead letters; one over Apache Kafka's default limit would stall the relay.
    """
    reasons = [len(s.last_header("dlq_reason") or "") for s in st.tap.seen["dead_letters"]]
    sizes = [
        len(s.key or b"") + len(s.value or b"") + sum(len(k) + len(v or b"") for k, v in s.headers)
        for s in st.tap.seen["dead_letters"]
    ]
    out["figures"]["longest dlq_reason (bytes)"] = max(reasons, default=0)
    out["figures"]["largest dead letter (bytes)"] = max(sizes, default=0)
    over = sum(size > BROKER_DEFAULT_MAX_BYTES for size in sizes)
    out["invariants"].append(
        scenarios.invariant("dead letters over 1 MiB (Apache Kafka's default limit)", over)
    )


async def _valid_calls_after(st: stack.Stack, rng: random.Random, out: dict[str, Any]) -> None:
    plan = workload.plan(10, 0.5, rng, outcomes={"ok": 1.0})
    await scenarios.send_plan(st, plan, time.monotonic())
    wanted = set(plan.tool_call_ids())

    async def answered() -> bool:
        return wanted <= {a.tool_call_id for a in st.tap.answers() if not a.is_error}

    try:
        took = await stack.until(answered, 60, "valid calls after the fuzz to be answered", 0.2)
        out["figures"]["valid calls afterwards answered in (s)"] = round(took, 1)
    except TimeoutError as exc:
        out["notes"].append(str(exc))
    got = {a.tool_call_id for a in st.tap.answers() if not a.is_error}
    out["invariants"].append(
        scenarios.invariant("valid calls afterwards unanswered", len(wanted - got))
    )


async def fuzzing(svc: ChaosServices, per_topic: int, big_cap: int, seed: int) -> dict[str, Any]:
    """
    Publish ``per_topic`` fuzzed records on each input topic and judge what became of each.
    """
    params = {"records_per_topic": per_topic, "large_per_topic": big_cap}
    title = f"{per_topic} fuzzed records on each of the 4 input topics"
    out = scenarios.result("fuzz", title, params)
    rng = random.Random(seed)
    records = [r for role in fuzz.ROLES for r in fuzz.generate(role, per_topic, rng, big_cap)]
    async with stack.stack(
        svc, "fuzz", max_request_bytes=4 * 1024 * 1024, **scenarios.LONG_TIMEOUTS
    ) as st:
        st.add_simulator()
        st.add_daemon(1)
        await st.wait_served()
        began = time.monotonic()
        sent = await _send_all(st, records, out)
        say(f"   {len(sent)} records sent in {time.monotonic() - began:.1f} s")
        try:
            took = await st.quiesce(60 + len(sent) / 50)
            out["figures"]["all handled and published after (s)"] = round(took, 1)
        except TimeoutError as exc:
            out["notes"].append(str(exc))
        seen = await _observed(st)
        tally = ledger.judge(sent, seen)
        out["figures"]["records sent"] = tally.records
        for name in (fuzz.DEAD, fuzz.ERROR, fuzz.ACCEPTED, fuzz.ANSWERED):
            out["figures"][f"outcome: {name}"] = tally.outcomes[name]
        out["figures"]["dead letters published more than once (allowed)"] = (
            tally.repeated_dead_letters
        )
        positions = {p for _, p in sent}
        others = sum(n for p, n in seen.dead_letters.items() if p not in positions)
        _dead_letter_sizes(st, out)
        out["per_kind"] = {k: dict(v) for k, v in sorted(tally.per_kind.items())}
        out["invariants"] += [
            scenarios.invariant("records unaccounted for", tally.unaccounted),
            scenarios.invariant(
                "records with an outcome the contract does not allow", tally.wrong_outcome
            ),
            scenarios.invariant(
                "input partitions not committed to their end", await _stuck_partitions(st)
            ),
            scenarios.invariant("valid records dead-lettered", others),
        ]
        await _valid_calls_after(st, rng, out)
        out["invariants"].append(
            scenarios.invariant("unexpected daemon exits", st.fleet.unexpected_exits("daemon"))
        )
        out["examples"] |= {k: v for k, v in tally.examples.items() if v}
        if st.fleet.exit_examples("daemon"):
            out["examples"]["unexpected exits"] = st.fleet.exit_examples("daemon")[:3]
    return out
