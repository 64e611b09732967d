"""
Define the data of every event on the topics (docs/contract.md) as pydantic models.

The same models validate inputs and produce the JSON Schemas in docs/schemas.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

ToolCallId = Field(min_length=1, max_length=255)

# A UUID in canonical text form (docs/contract.md), lower-cased on the way in.
# A string pattern checked by pydantic-core, not uuid.UUID objects: the same
# contract, without building and printing an object per id on the hot path.
UUID = Annotated[
    str,
    StringConstraints(
        pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        to_lower=True,
    ),
]


class _Data(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


Tool = Literal["create_workspace", "start_workspace", "stop_workspace"]
Transition = Literal["start", "stop"]


class ToolCallArguments(_Data):
    """
    Arguments of the create_workspace tool; start_workspace and stop_workspace take none.

    ``template_id`` is optional here only because the other tools have no
    arguments: create_workspace requires it, and checks it as R1 says.
    """

    template_id: str | None = None
    name: str | None = None
    parameters: dict[str, str] | None = None


class CreateArguments(_Data):
    """
    Arguments of create_workspace once R1 checked its template_id.
    """

    template_id: str
    name: str | None = None
    parameters: dict[str, str] | None = None


class ToolCallEnvelope(_Data):
    """
    A tool call but its arguments: all of it must be valid for the call to get an answer.
    """

    tool_call_id: str = ToolCallId
    chat_id: UUID
    owner_id: UUID
    tool: Tool
    template_name: str | None = None


class ToolCallData(_Data):
    """
    ``chat.tool_call.v1``.
    """

    tool_call_id: str = ToolCallId
    chat_id: UUID
    owner_id: UUID
    tool: Tool
    arguments: ToolCallArguments | None = None
    template_name: str | None = None


class CreateCallData(_Data):
    """
    ``chat.tool_call.v1`` of create_workspace, which must have its arguments.
    """

    arguments: CreateArguments
    template_name: str | None = None


class NoArgumentsCallData(_Data):
    """
    ``chat.tool_call.v1`` of start_workspace or stop_workspace: any object, or none, as arguments.
    """

    arguments: dict[str, object] | None = None


class ToolResultData(_Data):
    """
    ``chat.tool_result.v1``.
    """

    tool_call_id: str = ToolCallId
    chat_id: UUID
    tool: Tool
    is_error: bool
    content: dict[str, object]


class WorkspaceEventData(_Data):
    """
    ``chat.workspace.state_changed.v1``, ``chat.workspace.ready.v1``, ``chat.workspace.failed.v1``.
    """

    chat_id: UUID
    from_state: str
    to_state: str
    trigger: str
    workspace_id: UUID | None = None
    workspace_name: str | None = None
    agent_id: UUID | None = None
    reason: str | None = None
    version: int
    occurred_at: datetime


class RichParameterValue(_Data):
    """
    One template parameter of a create command.
    """

    name: str
    value: str


class CreateCommandData(_Data):
    """
    ``coder.workspace.create.v1``.
    """

    command_id: UUID
    chat_id: UUID
    owner_id: UUID
    template_id: UUID
    name: str
    rich_parameter_values: list[RichParameterValue]


class CreatedData(_Data):
    """
    ``coder.workspace.created.v1``.
    """

    command_id: UUID
    chat_id: UUID
    workspace_id: UUID
    workspace_name: str = Field(min_length=1)
    owner_name: str = Field(min_length=1)
    build_id: UUID
    job_id: UUID


class Validation(_Data):
    """
    One field error of a rejected create.
    """

    field: str
    detail: str


class CreateFailedData(_Data):
    """
    ``coder.workspace.create_failed.v1``.
    """

    command_id: UUID
    chat_id: UUID
    status_code: int | None = None
    message: str = Field(min_length=1)
    detail: str | None = None
    validations: list[Validation] | None = None


class BuildCommandData(_Data):
    """
    ``coder.workspace.build.v1``.
    """

    command_id: UUID
    chat_id: UUID
    workspace_id: UUID
    transition: Transition


class BuildQueuedData(_Data):
    """
    ``coder.workspace.build_queued.v1``.
    """

    command_id: UUID
    chat_id: UUID
    workspace_id: UUID
    transition: Transition
    build_id: UUID
    job_id: UUID


class BuildRejectedData(_Data):
    """
    ``coder.workspace.build_rejected.v1``.
    """

    command_id: UUID
    chat_id: UUID
    status_code: int | None = None
    message: str = Field(min_length=1)
    detail: str | None = None
    validations: list[Validation] | None = None


class AgentRef(_Data):
    """
    One agent of a workspace build.
    """

    id: UUID
    name: str


class JobUpdatedData(_Data):
    """
    ``coder.provisioner_job.updated.v1``.
    """

    job_id: UUID
    workspace_id: UUID
    build_id: UUID
    transition: Literal["start", "stop", "delete"]
    status: Literal["pending", "running", "succeeded", "canceling", "canceled", "failed", "unknown"]
    error: str | None = None
    agents: list[AgentRef] | None = None
    occurred_at: datetime


class HeartbeatData(_Data):
    """
    ``coder.agent.heartbeat.v1``.
    """

    agent_id: UUID
    workspace_id: UUID
    lifecycle_state: str | None = None
    occurred_at: datetime


EVENT_TYPES: dict[str, type[_Data]] = {
    "chat.tool_call.v1": ToolCallData,
    "chat.tool_result.v1": ToolResultData,
    "chat.workspace.state_changed.v1": WorkspaceEventData,
    "chat.workspace.ready.v1": WorkspaceEventData,
    "chat.workspace.failed.v1": WorkspaceEventData,
    "coder.workspace.create.v1": CreateCommandData,
    "coder.workspace.created.v1": CreatedData,
    "coder.workspace.create_failed.v1": CreateFailedData,
    "coder.workspace.build.v1": BuildCommandData,
    "coder.workspace.build_queued.v1": BuildQueuedData,
    "coder.workspace.build_rejected.v1": BuildRejectedData,
    "coder.provisioner_job.updated.v1": JobUpdatedData,
    "coder.agent.heartbeat.v1": HeartbeatData,
}
