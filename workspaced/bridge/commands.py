"""
Execute ``coder.workspace_commands`` against Coder's REST API and publish Coder's answers.

A command is answered exactly as Coder answered it: 201 becomes
``coder.workspace.created.v1``; a refusal (4xx but 429) becomes
``coder.workspace.create_failed.v1`` with Coder's ``status_code``,
``message``, ``detail`` and ``validations``. "Not now" (5xx, 429, a broken
connection, a timeout) is retried with exponential backoff and full jitter,
honouring ``Retry-After``, until Coder answers or the bridge stops; the
caller commits the command's offset only after its answer is published, so
a command is never dropped.

Never executed twice: a command delivered again (the bridge died between
Coder's 201 and its own publish) meets Coder's 409 "already exists" (or the
500 naming ``workspaces_owner_id_lower_idx`` that two racing creates can
get); the bridge then reads the workspace by owner and name, and when it has
the command's template it is the one this command made, answered as created.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from coder import errors as coder_errors
from coder import models
from telemetry import logs, metrics
from workspaced.bridge import mapping
from workspaced.bridge.publisher import EventPublisher

log = logs.get(__name__)
CREATE = "coder.workspace.create.v1"
BUILD = "coder.workspace.build.v1"
_KEYS = {
    CREATE: ("command_id", "chat_id", "owner_id", "template_id", "name"),
    BUILD: ("command_id", "chat_id", "workspace_id", "transition"),
}
# A latest build of the asked transition in one of these is the build asked for.
_NOT_FAILED = frozenset({"pending", "running", "succeeded"})
_NAME_INDEX = "workspaces_owner_id_lower_idx"


class CoderApi(Protocol):
    """
    The calls the bridge makes to Coder; ``coder.client.CoderClient`` provides them.
    """

    async def create_workspace(
        self,
        owner: str,
        template_id: str,
        name: str,
        rich_parameter_values: Mapping[str, str] | None = None,
    ) -> models.Workspace: ...

    async def workspace(
        self, workspace_id: str, *, include_deleted: bool = False
    ) -> models.Workspace: ...

    async def workspace_by_owner_and_name(self, owner: str, name: str) -> models.Workspace: ...

    async def create_build(self, workspace_id: str, transition: str) -> models.WorkspaceBuild: ...

    def watch(self, workspace_id: str) -> AsyncGenerator[models.Workspace, None]: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """
    Say how long to wait between tries: exponential from ``first_s`` to ``most_s``, full jitter.
    """

    first_s: float = 0.2
    most_s: float = 30.0

    def delay(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        """
        Return the wait before try ``attempt + 1``; Coder's ``Retry-After`` wins when given.
        """
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self.most_s * 4)
        return rng.uniform(0, min(self.most_s, self.first_s * 2**attempt))


class CommandExecutor:
    """
    Execute one command at a time, retrying until Coder answers or ``stop`` is set.
    """

    def __init__(  # noqa: PLR0913 - the executor's collaborators
        self,
        coder: CoderApi,
        publisher: EventPublisher,
        watch: Callable[[str], Any],
        stop: asyncio.Event,
        *,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._coder = coder
        self._publisher = publisher
        self._watch = watch
        self._stop = stop
        self._backoff = backoff or Backoff()
        self._rng = rng or random.Random()
        self.executed = 0

    async def execute(self, ce_type: str, value: bytes | None) -> bool:
        """
        Execute one command record; return False when stopping left it unanswered.
        """
        keys = _KEYS.get(ce_type)
        if keys is None:
            log.warning("bridge_command_skipped", ce_type=ce_type, reason="unknown type")
            return True
        command = _readable(value, keys)
        if command is None:
            log.warning("bridge_command_unreadable", ce_type=ce_type)
            return True  # the daemon wrote it: nothing a retry would change
        if ce_type == CREATE:
            answered = await self._until_answered(
                command, self._try_create, self._created, self._failed
            )
        else:
            answered = await self._until_answered(
                command, self._try_build, self._queued, self._refused
            )
        self.executed += answered
        return answered

    async def _until_answered(
        self,
        command: dict[str, Any],
        call: Callable[[dict[str, Any]], Awaitable[Any]],
        done: Callable[[dict[str, Any], Any], Awaitable[None]],
        refused: Callable[[dict[str, Any], coder_errors.CoderRejectedError], Awaitable[None]],
    ) -> bool:
        attempt = 0
        while True:
            try:
                answer = await call(command)
            except coder_errors.CoderRejectedError as refusal:
                await refused(command, refusal)
                return True
            except coder_errors.CoderUnavailableError as unavailable:
                delay_s = self._backoff.delay(attempt, unavailable.retry_after_s, self._rng)
                log.warning(
                    "coder_call_retrying",
                    chat_id=command["chat_id"],
                    command_id=command["command_id"],
                    error=str(unavailable),
                    retry_in_s=round(delay_s, 3),
                )
                attempt += 1
                if await _stopped_within(self._stop, delay_s):
                    return False
                continue
            await done(command, answer)
            return True

    async def _try_create(self, command: dict[str, Any]) -> models.Workspace:
        # Insertion order is the command's, sorted by name (R3).
        parameters = {p["name"]: p["value"] for p in command.get("rich_parameter_values") or ()}
        try:
            return await self._coder.create_workspace(
                command["owner_id"], command["template_id"], command["name"], parameters
            )
        except coder_errors.CoderRejectedError as refused:
            if not _name_taken(refused):
                raise
            found = await self._coder.workspace_by_owner_and_name(
                command["owner_id"], command["name"]
            )
            if str(found.template_id) != command["template_id"]:
                raise refused from None
            log.info(
                "bridge_command_already_done",
                chat_id=command["chat_id"],
                workspace_id=str(found.id),
            )
            return found
        except coder_errors.CoderUnavailableError as unavailable:
            if unavailable.status_code == 500 and _NAME_INDEX in unavailable.detail:
                # Two creates raced on the name: the loser's 500 means "exists".
                found = await self._coder.workspace_by_owner_and_name(
                    command["owner_id"], command["name"]
                )
                if str(found.template_id) == command["template_id"]:
                    return found
                raise coder_errors.CoderRejectedError(
                    409, f'Workspace "{command["name"]}" already exists.'
                ) from None
            raise

    async def _try_build(self, command: dict[str, Any]) -> models.WorkspaceBuild:
        """
        Queue a start or stop build, unless the latest build already does it.

        A command delivered again (the bridge died after Coder queued the
        build) finds that build as the latest, and answers with it rather
        than queueing a second one.
        """
        workspace = await self._coder.workspace(command["workspace_id"])
        latest = workspace.latest_build
        if (
            latest.transition.value == command["transition"]
            and latest.job.status.value in _NOT_FAILED
        ):
            return latest
        return await self._coder.create_build(command["workspace_id"], command["transition"])

    async def _queued(self, command: dict[str, Any], build: models.WorkspaceBuild) -> None:
        metrics.BRIDGE_COMMANDS.labels("build_queued").inc()
        data = mapping.build_queued(command, build)
        ce_id = mapping.event_id("build_queued", command["command_id"])
        await self._publisher.send(
            "workspace_command_results", command["chat_id"], mapping.BUILD_QUEUED, ce_id, data
        )

    async def _refused(
        self, command: dict[str, Any], refused: coder_errors.CoderRejectedError
    ) -> None:
        metrics.BRIDGE_COMMANDS.labels("build_rejected").inc()
        validations = [{"field": v.field, "detail": v.detail} for v in refused.validations]
        data = mapping.rejected(
            command, refused.status_code, refused.message, refused.detail, validations
        )
        ce_id = mapping.event_id("build_rejected", command["command_id"])
        await self._publisher.send(
            "workspace_command_results", command["chat_id"], mapping.BUILD_REJECTED, ce_id, data
        )

    async def _created(self, command: dict[str, Any], workspace: models.Workspace) -> None:
        metrics.BRIDGE_COMMANDS.labels("created").inc()
        await self._watch(str(workspace.id))  # watch before answering: no update slips by
        data = mapping.created(command, workspace)
        ce_id = mapping.event_id("created", command["command_id"])
        await self._publisher.send(
            "workspace_command_results", command["chat_id"], mapping.CREATED, ce_id, data
        )

    async def _failed(
        self, command: dict[str, Any], refused: coder_errors.CoderRejectedError
    ) -> None:
        metrics.BRIDGE_COMMANDS.labels("create_failed").inc()
        validations = [{"field": v.field, "detail": v.detail} for v in refused.validations]
        data = mapping.rejected(
            command, refused.status_code, refused.message, refused.detail, validations
        )
        ce_id = mapping.event_id("create_failed", command["command_id"])
        log.info(
            "bridge_create_refused", chat_id=command["chat_id"], status_code=refused.status_code
        )
        await self._publisher.send(
            "workspace_command_results", command["chat_id"], mapping.CREATE_FAILED, ce_id, data
        )


def _readable(value: bytes | None, keys: tuple[str, ...]) -> dict[str, Any] | None:
    try:
        command = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(command, dict) or not all(isinstance(command.get(k), str) for k in keys):
        return None
    return command


def _name_taken(refused: coder_errors.CoderRejectedError) -> bool:
    return refused.status_code == 409 or _NAME_INDEX in refused.detail


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True
