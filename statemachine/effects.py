"""
Describe the effects of a decision as data; storage performs them in one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from statemachine.model import Tool
from statemachine.states import State, Trigger


class Topic(StrEnum):
    """
    Name the output topics by role; settings turn a role into a topic name.
    """

    TOOL_RESULTS = "tool_results"
    WORKSPACE_EVENTS = "workspace_events"
    WORKSPACE_COMMANDS = "workspace_commands"


@dataclass(frozen=True, slots=True)
class RecordTransition:
    """
    Write one row of ``workspace_transitions``.
    """

    chat_id: str
    from_state: State
    to_state: State
    trigger: Trigger
    event_id: str
    occurred_at: datetime
    version: int
    detail: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Publish:
    """
    Put one CloudEvent in the outbox, to be published after commit.
    """

    topic: Topic
    key: str
    ce_type: str
    ce_id: str
    occurred_at: datetime
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Wait:
    """
    Keep a tool call waiting until its chat is ready, stopped or failed (R5).
    """

    tool_call_id: str
    chat_id: str
    creator: bool
    event_id: str
    occurred_at: datetime
    tool: Tool = Tool.CREATE


@dataclass(frozen=True, slots=True)
class Answer:
    """
    Give a tool call its one result (R14); its event id depends only on the call.
    """

    tool_call_id: str
    chat_id: str
    is_error: bool
    content: Mapping[str, Any]
    occurred_at: datetime
    tool: Tool = Tool.CREATE


Effect = RecordTransition | Publish | Wait | Answer
