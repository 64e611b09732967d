"""
The original tool's waiting strategy, re-implemented only to compare against it.

Coder's ``create_workspace`` chat tool (chatd) blocks one goroutine per chat:
it reads the build's provisioner job every 2 s until the job is terminal (10
min limit), then checks the workspace agent every 2 s until it answers (2 min
limit). Here each waiting chat is one asyncio task doing the same against the
same PostgreSQL tables the daemon fills from Kafka: ``provisioner_jobs`` (the
job's status and agents) and ``agents`` (``last_seen_at``). One statement per
poll, which is generous to the baseline (the original reads the build, then
its job, through coderd's API).

Run as ``python -m bench.baseline --dsn URL --out FILE``; it reads lines
``<chat_id> <job_id>`` from stdin and starts one task per line at once. It
exits when stdin is closed and every task is done, or on SIGTERM, and writes
``{"noticed": {chat_id: unix time}, "outcomes": {...}, "polls": n}`` to FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson

POLL_S = 2.0
BUILD_LIMIT_S = 600.0
AGENT_LIMIT_S = 120.0
AGENT_INACTIVITY_S = 30.0
TERMINAL = frozenset({"succeeded", "failed", "canceled"})

_JOB = "SELECT status, error, agents FROM provisioner_jobs WHERE job_id = $1"
_AGENT = "SELECT last_seen_at FROM agents WHERE agent_id = $1"


@dataclass
class Baseline:
    """
    One polling task per waiting chat, as the original tool has one goroutine per chat.
    """

    pool: asyncpg.Pool
    noticed: dict[str, float] = field(default_factory=dict)
    outcomes: dict[str, str] = field(default_factory=dict)
    polls: int = 0

    async def wait(self, chat_id: str, job_id: str) -> None:
        """
        Wait for the chat's build, then for its agent; note when both were seen.
        """
        status, agents = await self._wait_build(job_id)
        if status != "succeeded":
            self.outcomes[chat_id] = status
            self.noticed[chat_id] = time.time()
            return
        if not agents:
            self.outcomes[chat_id] = "no_agent"
            self.noticed[chat_id] = time.time()
            return
        self.outcomes[chat_id] = await self._wait_agent(agents[0]["id"])
        self.noticed[chat_id] = time.time()

    async def _wait_build(self, job_id: str) -> tuple[str, list[dict[str, str]]]:
        deadline = time.monotonic() + BUILD_LIMIT_S
        while True:
            self.polls += 1
            row = await self.pool.fetchrow(_JOB, job_id)
            if row is not None and row["status"] in TERMINAL:
                agents = row["agents"]
                if isinstance(agents, str):
                    agents = orjson.loads(agents)
                return row["status"], list(agents or [])
            if time.monotonic() >= deadline:
                return "build_timeout", []
            await asyncio.sleep(POLL_S)

    async def _wait_agent(self, agent_id: str) -> str:
        deadline = time.monotonic() + AGENT_LIMIT_S
        while True:
            self.polls += 1
            seen = await self.pool.fetchval(_AGENT, agent_id)
            if seen is not None and (datetime.now(UTC) - seen).total_seconds() < AGENT_INACTIVITY_S:
                return "ready"
            if time.monotonic() >= deadline:
                return "agent_timeout"
            await asyncio.sleep(POLL_S)


async def _keep(_conn: asyncpg.Connection) -> None:
    return None


async def _main(dsn: str, out: Path, pool_size: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Go's database/sql hands a connection back as is; asyncpg would otherwise send
    # four housekeeping statements (RESET ALL, ...) after every poll.
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=pool_size, reset=_keep)
    baseline = Baseline(pool)
    tasks: set[asyncio.Task[None]] = set()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def feed() -> None:
        while line := await reader.readline():
            parts = line.decode().split()
            if len(parts) == 2:
                tasks.add(asyncio.create_task(baseline.wait(parts[0], parts[1])))

    feeder = asyncio.create_task(feed())
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({feeder, stopper}, return_when=asyncio.FIRST_COMPLETED)
        while tasks and not stop.is_set():
            await asyncio.wait({*tasks, stopper}, return_when=asyncio.FIRST_COMPLETED)
            tasks = {t for t in tasks if not t.done()}
    finally:
        for task in [*tasks, feeder, stopper]:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pool.close(), 5)
        report = {
            "noticed": baseline.noticed,
            "outcomes": baseline.outcomes,
            "polls": baseline.polls,
        }
        await asyncio.to_thread(out.write_bytes, orjson.dumps(report))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pool-size", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(_main(args.dsn, args.out, args.pool_size))


if __name__ == "__main__":
    main()
