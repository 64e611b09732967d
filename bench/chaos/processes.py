"""
Run the real ``workspaced run`` and ``workspaced simulate`` processes, kill them, watch them.

A process that exits without being killed by the run is an unexpected exit:
it is counted, its last error line kept, and it is started again (as a
supervisor such as systemd would) within a budget, so one crash does not end
the run but a crash loop does not last forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench.harness import BIN, ROOT
from devtools.services import process

RESTART_DELAY_S = 0.5


def last_error(log_tail: str) -> str:
    """
    Return the last error a process logged (JSON lines), short enough for a report.
    """
    for line in reversed(log_tail.splitlines()):
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("level") in {"error", "critical"}:
            keys = ("event", "error", "command", "topic", "partition", "offset")
            found = {k: entry[k] for k in keys if k in entry}
            return orjson.dumps(found).decode()[:400]
    lines = [s for s in log_tail.splitlines() if s.strip()]
    return lines[-1][:400] if lines else ""


@dataclass(slots=True)
class Supervised:
    """
    One long-running process of the run: how to start it, and what happened to it.
    """

    name: str
    argv: list[str]
    env: Callable[[int], dict[str, str]]  # given how many starts came before
    log_path: Path
    proc: process.ManagedProcess | None = None
    kills: int = 0
    starts: int = 0
    exits: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.proc = process.ManagedProcess.start(
            self.name, self.argv, log_path=self.log_path, env=self.env(self.starts), cwd=ROOT
        )
        self.starts += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def kill(self) -> None:
        """
        SIGKILL the process (no chance to finish anything) and reap it.
        """
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.popen.send_signal(signal.SIGKILL)
        self.proc.popen.wait(10)
        self.proc.stop(1)  # closes the log
        self.proc = None  # not an exit of its own: the watcher leaves it alone
        self.kills += 1

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc is not None:
            self.proc.stop(timeout_s)


class Fleet:
    """
    The processes of one scenario, restarted when they exit on their own.
    """

    def __init__(self, restart_budget: int = 8) -> None:
        self.members: list[Supervised] = []
        self.restart_budget = restart_budget
        self._task: asyncio.Task[None] | None = None

    def add(self, member: Supervised) -> Supervised:
        self.members.append(member)
        member.start()
        return member

    def unexpected_exits(self, prefix: str = "") -> int:
        return sum(len(m.exits) for m in self.members if m.name.startswith(prefix))

    def exit_examples(self, prefix: str = "") -> list[str]:
        return [
            f"{m.name}: {e}" for m in self.members if m.name.startswith(prefix) for e in m.exits
        ]

    def start_watching(self) -> None:
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            for member in self.members:
                if member.proc is None or member.alive():
                    continue
                code = member.proc.popen.returncode
                member.exits.append(f"exit {code}: {last_error(member.proc.log_tail(40))}")
                member.proc.stop(1)
                if sum(len(m.exits) for m in self.members) <= self.restart_budget:
                    await asyncio.sleep(RESTART_DELAY_S)
                    member.start()
                else:
                    member.proc = None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.gather(
            *(asyncio.to_thread(m.stop) for m in self.members), return_exceptions=True
        )


def daemon_argv() -> list[str]:
    return [str(BIN / "workspaced"), "run"]


def simulator_argv(
    create_delay_s: float = 0.05,
    job_step_s: float = 0.2,
    agent_connect_delay_s: float = 0.2,
    heartbeat_interval_s: float = 600.0,
    seed: int = 1,
) -> list[str]:
    return [
        str(BIN / "workspaced"),
        "simulate",
        "--create-delay-s",
        str(create_delay_s),
        "--job-step-s",
        str(job_step_s),
        "--agent-connect-delay-s",
        str(agent_connect_delay_s),
        "--heartbeat-interval-s",
        str(heartbeat_interval_s),
        "--seed",
        str(seed),
    ]
