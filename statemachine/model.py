"""
Hold the values the core reasons about: a chat's row, its waiting calls, known facts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from statemachine.states import State


class Tool(StrEnum):
    """
    Name the chat's workspace tools workspaced answers (``chat.tool_call.v1`` ``tool``).
    """

    CREATE = "create_workspace"
    START = "start_workspace"
    STOP = "stop_workspace"


@dataclass(frozen=True, slots=True)
class ChatWorkspace:
    """
    Mirror one row of ``chat_workspaces``: the state of one chat's workspace.
    """

    chat_id: str
    owner_id: str
    state: State
    version: int
    state_entered_at: datetime
    created_at: datetime
    updated_at: datetime
    workspace_id: str | None = None
    workspace_name: str | None = None
    owner_name: str | None = None
    build_id: str | None = None
    job_id: str | None = None
    agent_id: str | None = None
    agent_status: str | None = None
    template_id: str | None = None
    command_id: str | None = None
    requested_name: str | None = None
    parameters: tuple[tuple[str, str], ...] = ()
    last_error: str | None = None
    deadline_at: datetime | None = None

    @classmethod
    def new(cls, chat_id: str, owner_id: str, now: datetime) -> ChatWorkspace:
        """
        Return the row of a chat never seen before, in state ``none``.
        """
        return cls(chat_id, owner_id, State.NONE, 0, now, now, now)

    @property
    def full_name(self) -> str | None:
        """
        Return ``<owner_name>/<name>`` (Coder's FullName) once Coder named it.
        """
        if self.workspace_name is None:
            return None
        return f"{self.owner_name}/{self.workspace_name}"


@dataclass(frozen=True, slots=True)
class Waiter:
    """
    Be a tool call waiting on its chat: for the workspace to be ready, stopped, or to fail.

    ``creator`` marks the create_workspace call that caused the create (R4);
    start and stop calls are never creators. ``tool`` says how to answer.
    """

    tool_call_id: str
    creator: bool
    tool: Tool = Tool.CREATE


@dataclass(frozen=True, slots=True)
class Chat:
    """
    Pair a chat's row with the tool calls waiting on it.
    """

    row: ChatWorkspace
    waiters: tuple[Waiter, ...] = ()


@dataclass(frozen=True, slots=True)
class Agent:
    """
    Name one agent of a workspace build.
    """

    id: str
    name: str


@dataclass(frozen=True, slots=True)
class Job:
    """
    Hold the last known status of one provisioner job (merged, never backwards).
    """

    job_id: str
    workspace_id: str
    build_id: str
    transition: str
    status: str
    error: str | None
    agents: tuple[Agent, ...]
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class AnsweredCall:
    """
    Remember a tool call seen before, and its answer once it has one.
    """

    tool_call_id: str
    chat_id: str
    answer: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class Facts:
    """
    Carry what storage knows besides the row: jobs, heartbeats, past calls.

    Events arrive in any order, so a decision may need a job update or a
    heartbeat that came before the workspace was bound (spec R12).
    """

    jobs: Mapping[str, Job] = field(default_factory=dict)
    agents_seen_at: Mapping[str, datetime] = field(default_factory=dict)
    latest_builds: Mapping[str, Job] = field(default_factory=dict)
    calls: Mapping[str, AnsweredCall] = field(default_factory=dict)
    agent_lifecycles: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """
    Hold the timer lengths of spec R6 and R11, in seconds.
    """

    build_s: float = 600.0
    agent_connect_s: float = 120.0
    agent_inactivity_s: float = 30.0
    create_s: float = 120.0
    # Coder's chat tools wait for the agent's startup scripts after it
    # connects (workspacereadiness.go); off answers at the first heartbeat.
    wait_for_startup_scripts: bool = False
    startup_script_s: float = 600.0
