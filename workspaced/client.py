"""
Call workspaced from a chat backend: publish tool calls, await their results, follow events.

A ``WorkspaceClient`` holds one producer and one reader of ``chat.tool_results``
shared by every call waiting on it: the reader starts at the end of the topic
as it was when the client started (a call's result is always published after
the call), and hands each result to the call waiting on its ``tool_call_id``.
Events are read by a reader of their own, per ``events()`` iterator.

Records are built and checked with the daemon's own codec and schemas, so a
client and the daemon cannot disagree about the wire format::

    async with WorkspaceClient(settings.kafka_config(), source="my-chat") as client:
        result = await client.create_workspace(chat_id, owner_id, template_id, name="dev")
        async for event in client.events(chat_id, follow=True):
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pydantic
from aiokafka import AIOKafkaConsumer, TopicPartition

from consumers import codec, kafka, schemas

TOOL_CALL = "chat.tool_call.v1"
_TOPIC_WAIT_S = 10.0


class ClientError(Exception):
    """
    Raise when a call cannot be sent or its answer cannot be read.
    """


class ResultTimeoutError(ClientError, TimeoutError):
    """
    Raise when a tool result did not arrive in time; the call may still be answered later.
    """


@dataclass(frozen=True, slots=True)
class ToolResult:
    """
    Hold one ``chat.tool_result.v1``: what the chat's model gets back from the tool.
    """

    tool_call_id: str
    chat_id: str
    tool: str
    is_error: bool
    content: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class WorkspaceEvent:
    """
    Hold one ``chat.workspace.*.v1`` event with its CloudEvents type and id.
    """

    ce_type: str
    ce_id: str
    chat_id: str
    from_state: str
    to_state: str
    trigger: str
    version: int
    occurred_at: datetime
    workspace_id: str | None
    workspace_name: str | None
    agent_id: str | None
    reason: str | None

    @property
    def kind(self) -> str:
        """
        Return ``state_changed``, ``ready`` or ``failed``.
        """
        return self.ce_type.removeprefix("chat.workspace.").removesuffix(".v1")


class WorkspaceClient:
    """
    Publish tool calls and wait for their results over one shared reader.
    """

    def __init__(self, config: kafka.KafkaConfig, *, source: str = "workspaced-client") -> None:
        self._config = config
        self._source = source
        self._producer = kafka.producer(config, "workspaced-client")
        self._reader: AIOKafkaConsumer | None = None
        self._waiting: dict[str, asyncio.Future[ToolResult]] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> WorkspaceClient:  # noqa: PYI034 - not meant to be subclassed
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """
        Connect, and start reading results from the topic's current end.
        """
        with kafka.translated():
            await self._producer.start()
        try:
            self._reader = await _reader_at(self._config, "tool_results", from_beginning=False)
        except BaseException:
            with kafka.translated():
                await self._producer.stop()
            raise
        self._task = asyncio.create_task(self._read_results(self._reader), name="client-results")

    async def close(self) -> None:
        """
        Stop reading; calls still waiting raise ``ClientError``.
        """
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ClientError("the client was closed"))
                future.exception()  # nobody may be awaiting it: not worth a warning
        self._waiting.clear()
        with kafka.translated():
            if self._reader is not None:
                await self._reader.stop()
            await self._producer.stop()

    async def create_workspace(  # noqa: PLR0913 - the tool's own arguments
        self,
        chat_id: str,
        owner_id: str,
        template_id: str,
        *,
        name: str | None = None,
        parameters: Mapping[str, str] | None = None,
        template_name: str | None = None,
        tool_call_id: str | None = None,
        timeout_s: float | None = 900.0,
    ) -> ToolResult:
        """
        Call ``create_workspace`` and return its result.

        The daemon answers once the workspace is ready or has failed, so the
        default wait covers a build (10 min) and an agent (2 min) timeout.
        """
        arguments: dict[str, Any] = {"template_id": template_id}
        if name is not None:
            arguments["name"] = name
        if parameters is not None:
            arguments["parameters"] = dict(parameters)
        call_id = await self.send(
            "create_workspace",
            chat_id,
            owner_id,
            arguments,
            template_name=template_name,
            tool_call_id=tool_call_id,
        )
        return await self.result(call_id, timeout_s)

    async def start_workspace(
        self, chat_id: str, owner_id: str, *, timeout_s: float | None = 900.0
    ) -> ToolResult:
        """
        Call ``start_workspace`` on the chat's workspace and return its result.
        """
        call_id = await self.send("start_workspace", chat_id, owner_id, {})
        return await self.result(call_id, timeout_s)

    async def stop_workspace(
        self, chat_id: str, owner_id: str, *, timeout_s: float | None = 900.0
    ) -> ToolResult:
        """
        Call ``stop_workspace`` on the chat's workspace and return its result.
        """
        call_id = await self.send("stop_workspace", chat_id, owner_id, {})
        return await self.result(call_id, timeout_s)

    async def send(  # noqa: PLR0913 - a tool call's own fields
        self,
        tool: str,
        chat_id: str,
        owner_id: str,
        arguments: Mapping[str, Any],
        *,
        template_name: str | None = None,
        tool_call_id: str | None = None,
    ) -> str:
        """
        Publish one tool call and return its ``tool_call_id``; ``result()`` awaits the answer.

        The call is checked against the contract's schema first: a malformed
        call raises ``ClientError`` here instead of becoming a dead letter.
        """
        call_id = tool_call_id or f"call_{uuid.uuid4().hex}"
        data: dict[str, Any] = {
            "tool_call_id": call_id,
            "chat_id": chat_id,
            "owner_id": owner_id,
            "tool": tool,
            "arguments": dict(arguments),
        }
        if template_name is not None:
            data["template_name"] = template_name
        try:
            schemas.ToolCallData.model_validate(data)
        except pydantic.ValidationError as exc:
            msg = f"invalid tool call: {codec.describe(exc)}"
            raise ClientError(msg) from None
        # Waiting starts before the call leaves, so no answer can slip past.
        self._waiting.setdefault(call_id, asyncio.get_running_loop().create_future())
        headers = codec.encode_headers(self._source, str(uuid.uuid4()), TOOL_CALL, _now())
        with kafka.translated():
            await self._producer.send_and_wait(
                self._config.topic("tool_calls"),
                orjson.dumps(data),
                key=chat_id.encode(),
                headers=headers,
            )
        return call_id

    async def result(self, tool_call_id: str, timeout_s: float | None = 900.0) -> ToolResult:
        """
        Wait for the result of a call this client sent.

        Raise ``ResultTimeoutError`` after ``timeout_s``; the call stays
        registered, so ``result()`` may be awaited again.
        """
        future = self._waiting.get(tool_call_id)
        if future is None:
            msg = f"{tool_call_id} was not sent by this client"
            raise ClientError(msg)
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(future)
        except TimeoutError:
            msg = f"no result for {tool_call_id} within {timeout_s} s"
            raise ResultTimeoutError(msg) from None
        finally:
            if future.done():
                self._waiting.pop(tool_call_id, None)

    async def events(
        self,
        chat_id: str | None = None,
        *,
        from_beginning: bool = False,
        follow: bool = True,
    ) -> AsyncIterator[WorkspaceEvent]:
        """
        Yield workspace events, of one chat or all chats.

        ``from_beginning`` replays what the topic holds; ``follow=False`` ends
        at the end of the topic as it was when the iterator started.
        """
        reader = await _reader_at(self._config, "workspace_events", from_beginning=from_beginning)
        try:
            while True:
                if not follow and await _read_all(reader):
                    return
                with kafka.translated():
                    batch = await reader.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        event = _event(record)
                        if event is not None and chat_id in {None, event.chat_id}:
                            yield event
        finally:
            with kafka.translated():
                await reader.stop()

    async def _read_results(self, reader: AIOKafkaConsumer) -> None:
        while True:
            with kafka.translated():
                batch = await reader.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    result = _result(record)
                    if result is None:
                        continue
                    future = self._waiting.get(result.tool_call_id)
                    # A result published twice (R14) resolves its call once.
                    if future is not None and not future.done():
                        future.set_result(result)


async def _reader_at(
    config: kafka.KafkaConfig, role: str, *, from_beginning: bool
) -> AIOKafkaConsumer:
    topic = config.topic(role)
    reader = AIOKafkaConsumer(
        **kafka.common(config, f"workspaced-client-{role}"),
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=config.fetch_max_wait_ms,
    )
    with kafka.translated():
        await reader.start()
        # A topic just created takes a moment to show in every broker's
        # metadata (Apache Kafka): ask again for a few seconds before giving up.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _TOPIC_WAIT_S
        while True:
            # topics() fetches this very metadata but keeps only the names;
            # partitions_for_topic() reads the client's own, which a reader
            # with no subscription may never refresh.
            cluster = await reader._client.fetch_all_metadata()  # noqa: SLF001
            partitions = cluster.partitions_for_topic(topic)
            if partitions:
                break
            if loop.time() > deadline:
                await reader.stop()
                msg = f"topic {topic} does not exist: is the daemon running with these settings?"
                raise ClientError(msg)
            await asyncio.sleep(0.1)
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        reader.assign(assigned)
        if from_beginning:
            await reader.seek_to_beginning(*assigned)
        else:
            await reader.seek_to_end(*assigned)
            for tp in assigned:  # resolve the end now, not lazily at the first fetch
                await reader.position(tp)
    return reader


async def _read_all(reader: AIOKafkaConsumer) -> bool:
    """
    Tell whether the reader reached every partition's high watermark of its last fetch.

    High watermarks from fetches, not ListOffsets: Tansu answers the latter
    with stale figures.
    """
    for tp in reader.assignment():
        mark = reader.highwater(tp)
        if mark is None or await reader.position(tp) < mark:
            return False
    return True


def _result(record: Any) -> ToolResult | None:
    try:
        data = schemas.ToolResultData.model_validate_json(record.value)
    except (pydantic.ValidationError, TypeError):
        return None  # not ours to judge: the daemon validated what it published
    return ToolResult(data.tool_call_id, data.chat_id, data.tool, data.is_error, data.content)


def _event(record: Any) -> WorkspaceEvent | None:
    headers = {k: (v or b"").decode(errors="replace") for k, v in record.headers}
    try:
        data = schemas.WorkspaceEventData.model_validate_json(record.value)
    except (pydantic.ValidationError, TypeError):
        return None
    return WorkspaceEvent(
        ce_type=headers.get("ce_type", ""),
        ce_id=headers.get("ce_id", ""),
        chat_id=data.chat_id,
        from_state=data.from_state,
        to_state=data.to_state,
        trigger=data.trigger,
        version=data.version,
        occurred_at=data.occurred_at,
        workspace_id=data.workspace_id,
        workspace_name=data.workspace_name,
        agent_id=data.agent_id,
        reason=data.reason,
    )


def _now() -> datetime:
    return datetime.now(UTC)
