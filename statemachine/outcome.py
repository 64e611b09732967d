"""
Accumulate one decision: the chat's new row, its waiting calls, and the effects that follow.

``Outcome`` is a local, short-lived builder used by ``decide`` and its
helpers; every move goes through ``move``, which checks it against the
transition table and records it (history row and workspace events).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from statemachine import effects, ids, machine
from statemachine.model import Chat, Facts, Timeouts, Tool, Waiter
from statemachine.states import State, Trigger

STATE_CHANGED = "chat.workspace.state_changed.v1"
READY_EVENT = "chat.workspace.ready.v1"
FAILED_EVENT = "chat.workspace.failed.v1"


@dataclass(frozen=True, slots=True)
class Context:
    """
    Carry what a decision may depend on besides the chat and the event.
    """

    now: datetime
    facts: Facts
    timeouts: Timeouts
    rng: random.Random


@dataclass(frozen=True, slots=True)
class Decision:
    """
    Hold the chat after an event and the effects to perform.
    """

    chat: Chat
    effects: tuple[effects.Effect, ...]


_UNSET: Any = object()


class Outcome:
    """
    Accumulate one decision: a local, short-lived builder, never shared.
    """

    def __init__(self, chat: Chat, ctx: Context) -> None:
        self.row = chat.row
        self.waiters = list(chat.waiters)
        self.effects: list[effects.Effect] = []
        self.ctx = ctx

    def decision(self) -> Decision:
        """
        Return the decision built so far.
        """
        return Decision(Chat(self.row, tuple(self.waiters)), tuple(self.effects))

    def deadline(self, state: State) -> datetime | None:
        """
        Return when ``state``, entered now, times out (R11), or None when it does not.
        """
        seconds = {
            State.CREATING: self.ctx.timeouts.create_s,
            State.BUILDING: self.ctx.timeouts.build_s,
            State.STOPPING: self.ctx.timeouts.build_s,
            State.AGENT_WAITING: self.ctx.timeouts.agent_connect_s,
        }.get(state)
        return None if seconds is None else self.ctx.now + timedelta(seconds=seconds)

    def change(self, **changes: Any) -> None:
        """
        Change the row without a transition (a job bound, a deadline renewed).
        """
        self.row = dataclasses.replace(self.row, updated_at=self.ctx.now, **changes)

    def move(
        self,
        to: State,
        trigger: Trigger,
        event_id: str,
        *,
        reason: str | None = None,
        deadline: datetime | None = _UNSET,
        **changes: Any,
    ) -> None:
        """
        Move the chat (refused unless the table has the move) and record the transition.

        ``last_error`` is the reason when the chat fails, else cleared, unless
        ``changes`` says otherwise.
        """
        row = self.row
        machine.check(trigger, row.state, to)
        now = self.ctx.now
        last_error = changes.pop("last_error", reason if to == State.FAILED else None)
        self.row = dataclasses.replace(
            row,
            state=to,
            version=row.version + 1,
            state_entered_at=now if to != row.state else row.state_entered_at,
            updated_at=now,
            deadline_at=self.deadline(to) if deadline is _UNSET else deadline,
            last_error=last_error,
            **changes,
        )
        self._record(row.state, trigger, event_id, reason)

    def _record(self, source: State, trigger: Trigger, event_id: str, reason: str | None) -> None:
        row = self.row
        data: dict[str, Any] = {
            "chat_id": row.chat_id,
            "from_state": source.value,
            "to_state": row.state.value,
            "trigger": trigger.value,
            "workspace_id": row.workspace_id,
            "workspace_name": row.full_name,
            "agent_id": row.agent_id,
            "reason": reason,
            "version": row.version,
            "occurred_at": rfc3339(self.ctx.now),
        }
        detail = {k: data[k] for k in ("workspace_id", "agent_id", "reason") if data[k]}
        if row.job_id:
            detail["job_id"] = row.job_id
        self.effects.append(
            effects.RecordTransition(
                row.chat_id, source, row.state, trigger, event_id, self.ctx.now, row.version, detail
            )
        )
        types = [STATE_CHANGED]
        if row.state != source and row.state in (State.READY, State.FAILED):
            types.append(READY_EVENT if row.state == State.READY else FAILED_EVENT)
        for ce_type in types:
            self.publish(
                effects.Topic.WORKSPACE_EVENTS,
                ce_type,
                ids.workspace_event(row.chat_id, row.version, ce_type),
                data,
            )

    def publish(self, topic: effects.Topic, ce_type: str, ce_id: str, data: dict[str, Any]) -> None:
        """
        Put one record in the outbox, keyed by the chat.
        """
        self.effects.append(
            effects.Publish(topic, self.row.chat_id, ce_type, ce_id, self.ctx.now, data)
        )

    def wait(self, tool_call_id: str, event_id: str, *, creator: bool, tool: Tool) -> None:
        """
        Keep a call waiting on the chat.
        """
        self.waiters.append(Waiter(tool_call_id, creator, tool))
        self.effects.append(
            effects.Wait(tool_call_id, self.row.chat_id, creator, event_id, self.ctx.now, tool)
        )

    def answer(
        self, tool_call_id: str, content: dict[str, Any], *, is_error: bool, tool: Tool
    ) -> None:
        """
        Give a call its one result.
        """
        self.effects.append(
            effects.Answer(tool_call_id, self.row.chat_id, is_error, content, self.ctx.now, tool)
        )

    def answer_waiter(self, waiter: Waiter, content: dict[str, Any], *, is_error: bool) -> None:
        """
        Give a waiting call its one result and stop it waiting.
        """
        self.answer(waiter.tool_call_id, content, is_error=is_error, tool=waiter.tool)
        self.waiters.remove(waiter)

    def waiting(self, *tools: Tool) -> list[Waiter]:
        """
        Return the calls of these tools waiting on the chat, oldest first.
        """
        return [w for w in self.waiters if w.tool in tools]


def rfc3339(moment: datetime) -> str:
    """
    Return ``moment`` as RFC 3339 text with a ``Z`` for UTC.
    """
    return moment.isoformat().replace("+00:00", "Z")
