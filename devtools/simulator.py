"""
Stand in for Coder's provisioner and agents on the same topics, for demos and load.

It consumes ``coder.workspace.create.v1`` and answers ``created`` (or
``create_failed``), then publishes the build's job updates pending, running,
succeeded or failed, and its agent's heartbeats. Outcomes are random at the
configured rates, or forced by a word in the requested name, so demos and
tests can ask for one: ``reject`` (create refused), ``fail`` (build fails),
``noagent`` (build without agent), ``lost`` (agent never connects),
``stop`` and ``delete`` (a stop or delete build follows the start).

It plays ``coder.workspace.build.v1`` (start or stop) out as Coder would:
``build_queued`` with a new build and job, the job's updates, and for a start
a new agent that beats; a stop silences the workspace's agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from consumers import codec, kafka
from devtools import owners
from telemetry import logs
from workspaced.settings import Settings

log = logs.get(__name__)
SOURCE = "coder-simulator"
BUILD_COMMAND = "coder.workspace.build.v1"
BUILD_QUEUED = "coder.workspace.build_queued.v1"
_NS = uuid.UUID("0d3e9a61-3b8e-4f0e-bb0c-5ad0d1a0c0de")


@dataclass(frozen=True, slots=True)
class SimulatorOptions:
    """
    Say how the simulated Coder behaves; delays in seconds, rates from 0 to 1.
    """

    create_delay_s: float = 0.05
    job_step_s: float = 0.5
    agent_connect_delay_s: float = 0.5
    heartbeat_interval_s: float = 15.0
    create_failure_rate: float = 0.0
    build_failure_rate: float = 0.0
    no_agent_rate: float = 0.0
    never_connect_rate: float = 0.0
    stop_rate: float = 0.0
    delete_rate: float = 0.0
    # None: each owner's name derives from its id (devtools.owners).
    owner_name: str | None = None
    seed: int | None = None


@dataclass(order=True)
class _Due:
    at: float
    seq: int
    action: Callable[[], None] = field(compare=False)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _derive(*parts: object) -> str:
    return str(uuid.uuid5(_NS, "/".join(map(str, parts))))


def _ce_type(headers: Any) -> str:
    for name, value in headers or ():
        if name == "ce_type":
            return bytes(value or b"").decode(errors="replace")
    return ""


class CoderSimulator:
    """
    Answer create commands and play out builds and agents on a single timer heap.
    """

    def __init__(self, settings: Settings, options: SimulatorOptions) -> None:
        self._settings = settings
        self._options = options
        self._rng = random.Random(options.seed)
        self._heap: list[_Due] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._pending: list[tuple[str, str, str, dict[str, Any]]] = []
        self._answered: dict[str, dict[str, Any]] = {}
        self._live_agents: set[str] = set()
        self._agents_of: dict[str, set[str]] = {}  # workspace_id -> its agents
        self.commands = 0

    async def run(self, stop: asyncio.Event) -> None:
        """
        Simulate until ``stop`` is set.
        """
        producer = kafka.producer(self._settings.kafka_config(), "workspaced-simulator")
        topic = self._settings.topic("workspace_commands")
        consumer = kafka.consumer(
            self._settings.kafka_config(),
            [topic],
            client_id="workspaced-simulator",
            group_id=f"{self._settings.consumer_group}-simulator",
            enable_auto_commit=True,
        )
        with kafka.translated():
            await producer.start()
            await consumer.start()
        try:
            tasks = [
                asyncio.create_task(self._consume(consumer, stop)),
                asyncio.create_task(self._clock(producer, stop)),
            ]
            await asyncio.gather(*tasks)
        finally:
            with kafka.translated():
                await consumer.stop()
                await producer.stop()

    async def _consume(self, consumer: Any, stop: asyncio.Event) -> None:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=1000)
            for records in batch.values():
                for record in records:
                    if _ce_type(record.headers) == BUILD_COMMAND:
                        self._on_build_command(record.value)
                    else:
                        self._on_command(record.value)
            if batch:
                self._wake.set()

    def _later(self, delay_s: float, action: Callable[[], None]) -> None:
        at = asyncio.get_running_loop().time() + delay_s
        heapq.heappush(self._heap, _Due(at, next(self._seq), action))

    def _emit(self, role: str, key: str, ce_type: str, data: dict[str, Any]) -> None:
        self._pending.append((role, key, ce_type, data))

    def _on_command(self, value: bytes | None) -> None:
        try:
            command = orjson.loads(value or b"")
            command_id, chat_id, name = command["command_id"], command["chat_id"], command["name"]
            owner_id = str(command["owner_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("simulator_bad_command")
            return
        self.commands += 1
        if command_id in self._answered:  # a redelivered command: answer the same again
            answer = self._answered[command_id]
            self._later(self._options.create_delay_s, lambda: self._emit(*answer["emit"]))
            return
        opts, rng = self._options, self._rng
        if "reject" in name or rng.random() < opts.create_failure_rate:
            data = {
                "command_id": command_id,
                "chat_id": chat_id,
                "status_code": 409,
                "message": "Workspace name already in use.",
                "validations": [{"field": "name", "detail": "This value is already in use."}],
            }
            emit = ("workspace_command_results", chat_id, "coder.workspace.create_failed.v1", data)
        else:
            data = {
                "command_id": command_id,
                "chat_id": chat_id,
                "workspace_id": _derive("workspace", command_id),
                "workspace_name": name,
                "owner_name": opts.owner_name or owners.owner_name(owner_id),
                "build_id": _derive("build", command_id),
                "job_id": _derive("job", command_id),
            }
            emit = ("workspace_command_results", chat_id, "coder.workspace.created.v1", data)
            self._later(opts.create_delay_s, lambda: self._build(data, name))
        self._answered[command_id] = {"emit": emit}
        self._later(opts.create_delay_s, lambda: self._emit(*emit))

    def _on_build_command(self, value: bytes | None) -> None:
        """
        Answer a start or stop command with a queued build, then play the build out.
        """
        try:
            command = orjson.loads(value or b"")
            command_id, chat_id = command["command_id"], command["chat_id"]
            workspace_id, transition = command["workspace_id"], command["transition"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("simulator_bad_command")
            return
        self.commands += 1
        delay_s = self._options.create_delay_s
        if command_id in self._answered:  # a redelivered command: the same build again
            answer = self._answered[command_id]
            self._later(delay_s, lambda: self._emit(*answer["emit"]))
            return
        job = {
            "job_id": _derive("job", command_id),
            "workspace_id": workspace_id,
            "build_id": _derive("build", command_id),
            "transition": transition,
        }
        data = {"command_id": command_id, "chat_id": chat_id, **job}
        emit = ("workspace_command_results", chat_id, BUILD_QUEUED, data)
        self._answered[command_id] = {"emit": emit}
        self._later(delay_s, lambda: self._emit(*emit))
        self._later(delay_s, lambda: self._play_build(job))

    def _play_build(self, job: dict[str, Any]) -> None:
        step, workspace_id = self._options.job_step_s, job["workspace_id"]
        for agent_id in self._agents_of.pop(workspace_id, set()):
            self._live_agents.discard(agent_id)  # a new build: the old agents are gone
        self._job(job, "pending", 0)
        self._job(job, "running", step)
        if job["transition"] != "start":
            self._job(job, "succeeded", 2 * step)
            return
        agent_id = _derive("agent", job["build_id"])
        self._agents_of[workspace_id] = {agent_id}
        self._job(job, "succeeded", 2 * step, agents=[{"id": agent_id, "name": "main"}])
        self._later(
            2 * step + self._options.agent_connect_delay_s,
            lambda: self._heartbeat(agent_id, workspace_id),
        )

    def _build(self, created: dict[str, Any], name: str) -> None:
        opts, rng = self._options, self._rng
        workspace_id = created["workspace_id"]
        fails = "fail" in name or rng.random() < opts.build_failure_rate
        no_agent = "noagent" in name or rng.random() < opts.no_agent_rate
        agent_id = _derive("agent", workspace_id)
        agents = [] if no_agent else [{"id": agent_id, "name": "main"}]
        if not no_agent:
            self._agents_of[workspace_id] = {agent_id}
        job = {
            "job_id": created["job_id"],
            "workspace_id": workspace_id,
            "build_id": created["build_id"],
            "transition": "start",
        }
        step = opts.job_step_s
        self._job(job, "pending", 0)
        self._job(job, "running", step)
        if fails:
            self._job(job, "failed", 2 * step, error="terraform apply: exit status 1")
            return
        self._job(job, "succeeded", 2 * step, agents=agents)
        if not no_agent and "lost" not in name and rng.random() >= opts.never_connect_rate:
            self._later(
                2 * step + opts.agent_connect_delay_s,
                lambda: self._heartbeat(agent_id, workspace_id),
            )
        follow = "stop" if "stop" in name or rng.random() < opts.stop_rate else None
        if "delete" in name or rng.random() < opts.delete_rate:
            follow = "delete"
        if follow:
            self._later(
                3 * step + opts.agent_connect_delay_s,
                lambda: self._follow_up(job, follow, agent_id),
            )

    def _follow_up(self, start: dict[str, Any], transition: str, agent_id: str) -> None:
        job = {
            "job_id": _derive(transition, start["job_id"]),
            "workspace_id": start["workspace_id"],
            "build_id": _derive(transition, start["build_id"]),
            "transition": transition,
        }
        self._live_agents.discard(agent_id)
        self._job(job, "pending", 0)
        self._job(job, "running", self._options.job_step_s)
        self._job(job, "succeeded", 2 * self._options.job_step_s)

    def _job(self, job: dict[str, Any], status: str, delay_s: float, **extra: Any) -> None:
        def emit() -> None:
            data = {**job, "status": status, "occurred_at": _now(), **extra}
            self._emit(
                "provisioner_job_updates",
                job["workspace_id"],
                "coder.provisioner_job.updated.v1",
                data,
            )

        self._later(delay_s, emit)

    def _heartbeat(self, agent_id: str, workspace_id: str) -> None:
        self._live_agents.add(agent_id)
        self._beat(agent_id, workspace_id)

    def _beat(self, agent_id: str, workspace_id: str) -> None:
        if agent_id not in self._live_agents:
            return
        data = {
            "agent_id": agent_id,
            "workspace_id": workspace_id,
            "lifecycle_state": "ready",
            "occurred_at": _now(),
        }
        self._emit("agent_heartbeats", agent_id, "coder.agent.heartbeat.v1", data)
        self._later(self._options.heartbeat_interval_s, lambda: self._beat(agent_id, workspace_id))

    async def _clock(self, producer: Any, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            now = loop.time()
            while self._heap and self._heap[0].at <= now:
                heapq.heappop(self._heap).action()
            if self._pending:
                await self._flush(producer)
            sleep_s = 0.5 if not self._heap else max(0.0, self._heap[0].at - loop.time())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(sleep_s, 0.5))

    async def _flush(self, producer: Any) -> None:
        pending, self._pending = self._pending, []
        futures = []
        with kafka.translated():
            for role, key, ce_type, data in pending:
                headers = codec.encode_headers(
                    SOURCE, str(uuid.uuid4()), ce_type, datetime.now(UTC)
                )
                futures.append(
                    await producer.send(
                        self._settings.topic(role),
                        orjson.dumps(data),
                        key=key.encode(),
                        headers=headers,
                    )
                )
            await asyncio.gather(*futures)
