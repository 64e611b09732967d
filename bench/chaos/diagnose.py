"""
Explain a stuck chat or a lost answer from the tables and the topics, for the report.

For each chat: its row, the job as stored, and every record Coder published
about it with its position, marked ``committed`` when the daemon's group has
committed past it. An input committed but not applied is a lost event (R16);
one not committed yet is a partition still waiting.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import orjson
from aiokafka.errors import KafkaError

from bench.chaos.stack import Stack

CODER_ROLES = ("workspace_command_results", "provisioner_job_updates", "agent_heartbeats")


def _records(st: Stack, role: str) -> Iterable[tuple[int, int, dict[str, Any]]]:
    for s in st.tap.seen.get(role, []):
        try:
            data = orjson.loads(s.value or b"{}")
        except orjson.JSONDecodeError:
            continue
        if isinstance(data, dict):
            yield s.partition, s.offset, data


async def _committed(st: Stack) -> dict[tuple[str, int], int]:
    try:
        found = await st.admin.list_consumer_group_offsets(
            st.conf.consumer_group, partitions=st.input_partitions()
        )
    except KafkaError:
        return {}
    return {(tp.topic, tp.partition): meta.offset for tp, meta in found.items()}


def _mark(st: Stack, committed: dict[tuple[str, int], int], role: str, part: int, off: int) -> str:
    done = committed.get((st.conf.topic(role), part), -1)
    return f"{part}:{off}{' committed' if off < done else ' NOT committed'}"


async def explain(st: Stack, chat_ids: list[str], limit: int = 3) -> list[str]:
    """
    Return one line per chat (at most ``limit``) saying where its story stopped.
    """
    chat_ids = chat_ids[:limit]
    if not chat_ids:
        return []
    rows = await st.db(
        "SELECT chat_id::text, state, job_id::text, agent_id::text, version,"
        " (SELECT count(*) FROM tool_calls t WHERE t.chat_id = c.chat_id AND answered_at IS NULL)"
        " AS waiting FROM chat_workspaces c WHERE chat_id = ANY($1::uuid[])",
        [uuid.UUID(c) for c in chat_ids],
    )
    jobs = {
        r["job_id"]: r["status"]
        for r in await st.db("SELECT job_id::text, status FROM provisioner_jobs")
    }
    committed = await _committed(st)
    lines = []
    for row in rows:
        chat, job, agent = row["chat_id"], row["job_id"], row["agent_id"]
        said = [
            f"{d.get('status') or ('created' if 'job_id' in d else 'rejected')}"
            f"@{_mark(st, committed, role, p, o)}"
            for role in CODER_ROLES
            for p, o, d in _records(st, role)
            if d.get("chat_id") == chat or (job and d.get("job_id") == job)
        ]
        beats = [
            _mark(st, committed, "agent_heartbeats", p, o)
            for p, o, d in _records(st, "agent_heartbeats")
            if agent and d.get("agent_id") == agent
        ]
        lines.append(
            f"chat {chat}: {row['state']} v{row['version']}, {row['waiting']} calls waiting;"
            f" job {job} stored as {jobs.get(job or '', 'absent')};"
            f" Coder said {', '.join(said) or 'nothing'};"
            f" heartbeats {', '.join(beats[:2]) or 'none'}"
        )
    return lines


async def group_lag(st: Stack) -> dict[str, int]:
    """
    Return the uncommitted records per input partition that has any.
    """
    parts = st.input_partitions()
    ends = await st.tap.reader.end_offsets(parts)
    committed = await _committed(st)
    lag = {}
    for tp in parts:
        left = ends[tp] - max(0, committed.get((tp.topic, tp.partition), 0))
        if left > 0:
            lag[f"{tp.topic}/{tp.partition}"] = left
    return lag
