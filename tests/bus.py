"""
Talk to the daemon the way chat backends and Coder do: records on Kafka topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from consumers import codec, kafka
from workspaced.settings import Settings

TEMPLATE_ID = "8a1b2c3d-4e5f-4a6b-9c7d-0e1f2a3b4c5d"
OWNER_ID = "5f0c6d2a-9b1e-4c3d-8e7f-a1b2c3d4e5f6"
OUTPUTS = ("tool_results", "workspace_events", "workspace_commands", "dead_letters")


@dataclass
class Received:
    key: str
    headers: dict[str, str]
    value: bytes

    @property
    def data(self) -> Any:
        return orjson.loads(self.value)

    @property
    def ce_type(self) -> str:
        return self.headers.get("ce_type", "")


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def new_id() -> str:
    return str(uuid.uuid4())


def workspace_for(command: dict[str, Any]) -> dict[str, str]:
    """
    Return the ids Coder would give the workspace of ``command``, without answering it.
    """
    return {
        "command_id": command["command_id"],
        "chat_id": command["chat_id"],
        "workspace_id": new_id(),
        "build_id": new_id(),
        "job_id": new_id(),
    }


class Bus:
    def __init__(self, conf: Settings, roles: tuple[str, ...] = OUTPUTS) -> None:
        self.conf = conf
        self.producer = kafka.producer(conf.kafka_config(), "test-bus")
        self.reader = AIOKafkaConsumer(
            **kafka.common(conf.kafka_config(), "test-reader"),
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=conf.kafka_fetch_max_wait_ms,
        )
        self.received: dict[str, list[Received]] = {role: [] for role in roles}
        self.raw_dead_letters: list[Any] = []  # as Kafka gave them: bytes, repeated headers
        self._roles = {conf.topic(role): role for role in roles}
        self._task: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()

    async def __aenter__(self) -> Bus:  # noqa: PYI034 - Bus is final
        await self.producer.start()
        await self.reader.start()
        parts = [
            TopicPartition(topic, p)
            for topic in self._roles
            for p in range(self.conf.topic_partitions)
        ]
        self.reader.assign(parts)
        await self.reader.seek_to_beginning(*parts)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()
        await self.reader.stop()
        await self.producer.stop()

    async def _read(self) -> None:
        while True:
            batch = await self.reader.getmany(timeout_ms=100)
            for tp, records in batch.items():
                for r in records:
                    headers = {k: (v or b"").decode(errors="replace") for k, v in r.headers}
                    key = (r.key or b"").decode(errors="replace")
                    self.received[self._roles[tp.topic]].append(Received(key, headers, r.value))
                    if self._roles[tp.topic] == "dead_letters":
                        self.raw_dead_letters.append(r)
            if batch:
                self._arrived.set()

    async def wait_for(
        self,
        role: str,
        match: Callable[[Received], bool] = lambda _: True,
        count: int = 1,
        timeout_s: float = 20.0,
    ) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while True:
            found = [r for r in self.received[role] if match(r)]
            if len(found) >= count:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                msg = f"waited {timeout_s} s for {count} record(s) on {role}; found {len(found)}"
                raise AssertionError(msg)
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(left, 0.5))

    async def caught_up(self) -> bool:
        """
        Tell whether this bus has read every output record the broker holds now.

        The high watermarks come from the reader's own fetches: Tansu answers
        ListOffsets (end_offsets) with stale figures.
        """
        assigned = list(self.reader.assignment())
        marks = [self.reader.highwater(tp) for tp in assigned]
        if any(mark is None for mark in marks):
            return False
        return all(
            [
                await self.reader.position(tp) >= mark
                for tp, mark in zip(assigned, marks, strict=True)
            ]
        )

    async def group_lag(self, group: str, roles: tuple[str, ...]) -> int:
        """
        Return how many records of ``roles``' topics ``group`` has not committed yet.
        """
        parts = [
            TopicPartition(self.conf.topic(role), p)
            for role in roles
            for p in range(self.conf.topic_partitions)
        ]
        # Assigned, never subscribed: it reads the group's committed offsets and
        # the partitions' high watermarks without joining the group.
        probe = AIOKafkaConsumer(
            **kafka.common(self.conf.kafka_config(), "test-lag"),
            group_id=group,
            enable_auto_commit=False,
            fetch_max_wait_ms=10,
        )
        await probe.start()
        try:
            probe.assign(parts)
            committed = {tp: await probe.committed(tp) or 0 for tp in parts}
            for tp, offset in committed.items():
                probe.seek(tp, offset)
            while any(probe.highwater(tp) is None for tp in parts):
                await probe.getmany(timeout_ms=100, max_records=1)
            return sum(probe.highwater(tp) - committed[tp] for tp in parts)
        finally:
            await probe.stop()

    async def settle(self, db: Any, timeout_s: float = 30.0) -> None:
        """
        Wait until nothing more can come: inputs committed, outbox empty, outputs read.

        For assertions that something did *not* happen, instead of sleeping.
        """
        roles = (
            "tool_calls",
            "workspace_command_results",
            "provisioner_job_updates",
            "agent_heartbeats",
        )
        deadline = time.monotonic() + timeout_s
        while True:
            if (
                not await db.fetchval("SELECT count(*) FROM outbox")
                and not await self.group_lag(self.conf.consumer_group, roles)
                and await self.caught_up()
            ):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the daemon did not settle within {timeout_s} s")
            await asyncio.sleep(0.05)

    async def wait_for_data(self, role: str, count: int, timeout_s: float = 20.0) -> list[Any]:
        return [r.data for r in await self.wait_for(role, count=count, timeout_s=timeout_s)]

    async def results_for(
        self, tool_call_id: str, count: int = 1, timeout_s: float = 20.0
    ) -> list[Any]:
        found = await self.wait_for(
            "tool_results", lambda r: r.data["tool_call_id"] == tool_call_id, count, timeout_s
        )
        return [r.data for r in found]

    async def command_for(self, chat_id: str, count: int = 1, timeout_s: float = 20.0) -> list[Any]:
        found = await self.wait_for(
            "workspace_commands", lambda r: r.data["chat_id"] == chat_id, count, timeout_s
        )
        return [r.data for r in found]

    def events_for(self, chat_id: str) -> list[Received]:
        return [r for r in self.received["workspace_events"] if r.data["chat_id"] == chat_id]

    async def publish(
        self,
        role: str,
        key: str,
        ce_type: str,
        data: Any,
        *,
        ce_id: str | None = None,
        source: str = "test",
        structured: bool = False,
        value: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> str:
        ce_id = ce_id or new_id()
        if structured:
            envelope = {
                "specversion": "1.0",
                "id": ce_id,
                "source": source,
                "type": ce_type,
                "time": now_iso(),
                "datacontenttype": "application/json",
                "data": data,
            }
            value = orjson.dumps(envelope)
            headers = [("content-type", b"application/cloudevents+json")]
        if headers is None:
            headers = codec.encode_headers(source, ce_id, ce_type, datetime.now(UTC))
        if value is None:
            value = orjson.dumps(data)
        await self.producer.send_and_wait(
            self.conf.topic(role), value, key=key.encode(), headers=headers
        )
        return ce_id

    async def tool_call(
        self,
        chat_id: str,
        *,
        tool_call_id: str | None = None,
        template_id: Any = TEMPLATE_ID,
        ce_id: str | None = None,
        **arguments: Any,
    ) -> str:
        tool_call_id = tool_call_id or f"call_{uuid.uuid4().hex[:16]}"
        template_name = arguments.pop("template_name", None)
        data: dict[str, Any] = {
            "tool_call_id": tool_call_id,
            "chat_id": chat_id,
            "owner_id": OWNER_ID,
            "tool": "create_workspace",
            "arguments": {"template_id": template_id, **arguments},
        }
        if template_name is not None:
            data["template_name"] = template_name
        await self.publish("tool_calls", chat_id, "chat.tool_call.v1", data, ce_id=ce_id)
        return tool_call_id

    async def created(
        self, command: dict[str, Any], *, name: str | None = None, ce_id: str | None = None
    ) -> dict[str, str]:
        ws = workspace_for(command) | {
            "workspace_name": name or command["name"],
            "owner_name": "alice",
        }
        await self.publish(
            "workspace_command_results",
            command["chat_id"],
            "coder.workspace.created.v1",
            ws,
            ce_id=ce_id,
        )
        return ws

    async def create_failed(self, command: dict[str, Any], message: str, **extra: Any) -> None:
        data = {
            "command_id": command["command_id"],
            "chat_id": command["chat_id"],
            "message": message,
            **extra,
        }
        await self.publish(
            "workspace_command_results",
            command["chat_id"],
            "coder.workspace.create_failed.v1",
            data,
        )

    async def job(
        self,
        ws: dict[str, str],
        status: str,
        *,
        transition: str = "start",
        agents: list[str] | None = None,
        error: str | None = None,
        job_id: str | None = None,
        ce_id: str | None = None,
    ) -> str:
        data: dict[str, Any] = {
            "job_id": job_id or ws["job_id"],
            "workspace_id": ws["workspace_id"],
            "build_id": ws["build_id"],
            "transition": transition,
            "status": status,
            "occurred_at": now_iso(),
        }
        if agents is not None:
            data["agents"] = [{"id": a, "name": f"agent{i}"} for i, a in enumerate(agents)]
        if error is not None:
            data["error"] = error
        return await self.publish(
            "provisioner_job_updates",
            ws["workspace_id"],
            "coder.provisioner_job.updated.v1",
            data,
            ce_id=ce_id,
        )

    async def heartbeat(
        self, agent_id: str, workspace_id: str, lifecycle_state: str = "ready"
    ) -> None:
        data = {
            "agent_id": agent_id,
            "workspace_id": workspace_id,
            "lifecycle_state": lifecycle_state,
            "occurred_at": now_iso(),
        }
        await self.publish("agent_heartbeats", agent_id, "coder.agent.heartbeat.v1", data)
