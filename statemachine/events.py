"""
Name the inputs of the state machine, already decoded and validated.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from statemachine.model import Job, Tool


@dataclass(frozen=True, slots=True)
class ToolCall:
    """
    Call one of the chat's workspace tools (``chat.tool_call.v1``, arguments valid).

    ``template_id``, ``name``, ``parameters`` and ``template_name`` are
    create_workspace's; start_workspace and stop_workspace take no arguments
    (``template_id`` is empty for them).
    """

    event_id: str
    tool_call_id: str
    chat_id: str
    owner_id: str
    template_id: str
    name: str | None
    parameters: tuple[tuple[str, str], ...]
    template_name: str | None
    tool: Tool = Tool.CREATE


@dataclass(frozen=True, slots=True)
class InvalidToolCall:
    """
    Carry a tool call whose ids are readable but whose arguments are not (R1, R15).
    """

    event_id: str
    tool_call_id: str
    chat_id: str
    tool: str
    error: str


@dataclass(frozen=True, slots=True)
class CreateAccepted:
    """
    Tell that Coder created the workspace (``coder.workspace.created.v1``).
    """

    event_id: str
    command_id: str
    chat_id: str
    workspace_id: str
    workspace_name: str
    owner_name: str
    build_id: str
    job_id: str


@dataclass(frozen=True, slots=True)
class CreateRejected:
    """
    Tell that Coder refused the create (``coder.workspace.create_failed.v1``).
    """

    event_id: str
    command_id: str
    chat_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class BuildQueued:
    """
    Tell that Coder queued a start or stop build (``coder.workspace.build_queued.v1``).
    """

    event_id: str
    command_id: str
    chat_id: str
    workspace_id: str
    transition: str
    build_id: str
    job_id: str


@dataclass(frozen=True, slots=True)
class BuildRejected:
    """
    Tell that Coder refused a start or stop build (``coder.workspace.build_rejected.v1``).
    """

    event_id: str
    command_id: str
    chat_id: str
    status_code: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class JobChanged:
    """
    Tell that a provisioner job's merged status moved forward.
    """

    event_id: str
    job: Job


@dataclass(frozen=True, slots=True)
class AgentSeen:
    """
    Tell that an agent sent a heartbeat.
    """

    event_id: str
    agent_id: str
    seen_at: datetime
    # The agent's lifecycle as Coder reports it (`created`, `starting`, `ready`,
    # `start_error`, ...); None when the reporter does not say.
    lifecycle_state: str | None = None


@dataclass(frozen=True, slots=True)
class TimerFired:
    """
    Tell that the deadline stored on a chat's row has passed.
    """

    event_id: str
    chat_id: str
    version: int


Event = (
    ToolCall
    | InvalidToolCall
    | CreateAccepted
    | CreateRejected
    | BuildQueued
    | BuildRejected
    | JobChanged
    | AgentSeen
    | TimerFired
)
