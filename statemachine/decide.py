"""
Decide, for one chat and one event, the chat's next state and the effects that follow.

``decide`` is the whole of rules R4 to R12: given the chat (row and waiting
calls), an event, the facts storage knows and the time, it returns the new
chat and the effects as data. It never reads a clock or does I/O.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from statemachine import effects, ids, machine, naming, results
from statemachine import events as ev
from statemachine.model import Chat, ChatWorkspace, Facts, Job, Timeouts, Waiter
from statemachine.states import IN_PROGRESS, State, Trigger

CREATE_TIMED_OUT = "timed out waiting for Coder to accept the create"
BUILD_TIMED_OUT = "timed out waiting for workspace build"
BUILD_FAILED = "build failed"
BUILD_CANCELED = "build was canceled"
WORKSPACE_DELETED = "workspace was deleted"
EXISTING_FAILED = "existing workspace build failed: "
WORKSPACE_BUILD_FAILED = "workspace build failed: "

STATE_CHANGED = "chat.workspace.state_changed.v1"
READY_EVENT = "chat.workspace.ready.v1"
FAILED_EVENT = "chat.workspace.failed.v1"
CREATE_COMMAND = "coder.workspace.create.v1"


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
_CLEARED_WORKSPACE = dict.fromkeys(
    ("workspace_id", "workspace_name", "owner_name", "build_id", "job_id", "agent_id"), None
) | {"agent_status": None}


class _Outcome:
    """
    Accumulate one decision: a local, short-lived builder, never shared.
    """

    def __init__(self, chat: Chat, ctx: Context) -> None:
        self.row = chat.row
        self.waiters = list(chat.waiters)
        self.effects: list[effects.Effect] = []
        self.ctx = ctx

    def decision(self) -> Decision:
        return Decision(Chat(self.row, tuple(self.waiters)), tuple(self.effects))

    def _deadline(self, state: State) -> datetime | None:
        seconds = {
            State.CREATING: self.ctx.timeouts.create_s,
            State.BUILDING: self.ctx.timeouts.build_s,
            State.AGENT_WAITING: self.ctx.timeouts.agent_connect_s,
        }.get(state)
        return None if seconds is None else self.ctx.now + timedelta(seconds=seconds)

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
        row = self.row
        machine.check(trigger, row.state, to)
        now = self.ctx.now
        self.row = dataclasses.replace(
            row,
            state=to,
            version=row.version + 1,
            state_entered_at=now if to != row.state else row.state_entered_at,
            updated_at=now,
            deadline_at=self._deadline(to) if deadline is _UNSET else deadline,
            last_error=reason if to == State.FAILED else None,
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
            "occurred_at": _rfc3339(self.ctx.now),
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
        self.effects.append(
            effects.Publish(topic, self.row.chat_id, ce_type, ce_id, self.ctx.now, data)
        )

    def wait(self, tool_call_id: str, event_id: str, *, creator: bool) -> None:
        self.waiters.append(Waiter(tool_call_id, creator))
        self.effects.append(
            effects.Wait(tool_call_id, self.row.chat_id, creator, event_id, self.ctx.now)
        )

    def answer(self, tool_call_id: str, content: dict[str, Any], *, is_error: bool) -> None:
        self.effects.append(
            effects.Answer(tool_call_id, self.row.chat_id, is_error, content, self.ctx.now)
        )

    def answer_ready(self, agent_status: str | None, startup: dict[str, str] | None = None) -> None:
        full_name = self.row.full_name or ""
        for waiter in self.waiters:
            if waiter.creator:
                content = results.created(full_name, agent_status, startup)
            else:
                content = results.existing(full_name, "already_exists", results.ALREADY_BUILT)
                content |= startup or {}
            self.answer(waiter.tool_call_id, content, is_error=False)
        self.waiters.clear()

    def answer_failed(self, reason: str, creator_error: str) -> None:
        for waiter in self.waiters:
            message = creator_error if waiter.creator else EXISTING_FAILED + reason
            self.answer(waiter.tool_call_id, results.error(message), is_error=True)
        self.waiters.clear()

    def answer_not_ready(self) -> None:
        content = results.created(self.row.full_name or "", "not_ready")
        for waiter in self.waiters:
            self.answer(waiter.tool_call_id, content, is_error=False)
        self.waiters.clear()


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def decide(chat: Chat, event: ev.Event, ctx: Context) -> Decision:
    """
    Return the chat after ``event`` and the effects to perform.
    """
    out = _Outcome(chat, ctx)
    match event:
        case ev.ToolCall():
            _on_tool_call(out, event)
        case ev.InvalidToolCall():
            _on_invalid_tool_call(out, event)
        case ev.CreateAccepted():
            _on_create_accepted(out, event)
        case ev.CreateRejected():
            _on_create_rejected(out, event)
        case ev.JobChanged():
            _on_job_changed(out, event.job, event.event_id)
        case ev.AgentSeen():
            _on_agent_seen(out, event)
        case ev.TimerFired():
            _on_timer(out, event)
    return out.decision()


def _seen_before(out: _Outcome, tool_call_id: str) -> bool:
    """
    Re-answer a call seen before with its stored answer (same event id), if any.
    """
    if any(w.tool_call_id == tool_call_id for w in out.waiters):
        return True
    known = out.ctx.facts.calls.get(tool_call_id)
    if known is None:
        return False
    if known.answer is not None and known.chat_id == out.row.chat_id:
        content = known.answer["content"]
        out.answer(tool_call_id, content, is_error=bool(known.answer["is_error"]))
    return True


def _on_invalid_tool_call(out: _Outcome, call: ev.InvalidToolCall) -> None:
    if not _seen_before(out, call.tool_call_id):
        out.answer(call.tool_call_id, results.error(call.error), is_error=True)


def _stopped(row: ChatWorkspace, facts: Facts) -> bool:
    latest = facts.latest_builds.get(row.workspace_id) if row.workspace_id else None
    return latest is not None and latest.transition == "stop" and latest.status == "succeeded"


def _reachable(row: ChatWorkspace, ctx: Context) -> bool:
    if row.agent_status == "no_agent":
        return True
    seen = ctx.facts.agents_seen_at.get(row.agent_id) if row.agent_id else None
    return seen is not None and ctx.now - seen <= timedelta(seconds=ctx.timeouts.agent_inactivity_s)


def _on_tool_call(out: _Outcome, call: ev.ToolCall) -> None:
    if _seen_before(out, call.tool_call_id):
        return
    row = out.row
    if _stopped(row, out.ctx.facts):
        content = results.existing(row.full_name or "", "stopped", results.STOPPED)
        out.answer(call.tool_call_id, content, is_error=False)
        return
    if row.state in IN_PROGRESS:
        if row.state == State.AGENT_WAITING and row.deadline_at is None:
            # The agent timer already answered earlier calls; give this one its own wait.
            deadline = out.ctx.now + timedelta(seconds=out.ctx.timeouts.agent_connect_s)
            out.row = dataclasses.replace(row, deadline_at=deadline, updated_at=out.ctx.now)
        out.wait(call.tool_call_id, call.event_id, creator=False)
        return
    if row.state == State.READY and _reachable(row, out.ctx):
        content = results.existing(row.full_name or "", "already_exists", results.ALREADY_RUNNING)
        out.answer(call.tool_call_id, content, is_error=False)
        return
    _start_create(out, call)


def _unresolved_command(row: ChatWorkspace) -> bool:
    """
    Tell whether the last create command timed out with no answer from Coder yet.
    """
    return (
        row.state == State.FAILED
        and row.command_id is not None
        and row.workspace_id is None
        and row.last_error == CREATE_TIMED_OUT
    )


def _start_create(out: _Outcome, call: ev.ToolCall) -> None:
    row = out.row
    if _unresolved_command(row) and row.command_id and row.template_id and row.requested_name:
        # Coder may still act on the command that timed out: send the very same
        # command again (same id, same name) rather than a second one (R2, R13).
        owner_id, template_id = row.owner_id, row.template_id
        name, command_id, parameters = row.requested_name, row.command_id, row.parameters
    else:
        owner_id, template_id = call.owner_id, call.template_id
        name = naming.choose(call.name, call.template_name, out.ctx.rng)
        command_id = ids.create_command(call.chat_id, row.version + 1)
        parameters = tuple(sorted(call.parameters))
    out.move(
        State.CREATING,
        Trigger.TOOL_CALL,
        call.event_id,
        owner_id=owner_id,
        template_id=template_id,
        requested_name=name,
        command_id=command_id,
        parameters=parameters,
        **_CLEARED_WORKSPACE,
    )
    data = {
        "command_id": command_id,
        "chat_id": call.chat_id,
        "owner_id": owner_id,
        "template_id": template_id,
        "name": name,
        "rich_parameter_values": [{"name": k, "value": v} for k, v in parameters],
    }
    # A resent command keeps its command_id but is a new record: consumers
    # that drop a CloudEvent id seen before must not drop the resend.
    ce_id = ids.create_command(call.chat_id, out.row.version)
    out.publish(effects.Topic.WORKSPACE_COMMANDS, CREATE_COMMAND, ce_id, data)
    out.wait(call.tool_call_id, call.event_id, creator=True)


def _on_create_accepted(out: _Outcome, accepted: ev.CreateAccepted) -> None:
    row = out.row
    if accepted.command_id != row.command_id:
        return  # an answer to an older command, or a duplicate
    # A create that timed out may still be accepted later: bind it rather than leak it.
    late = row.state == State.FAILED and row.workspace_id is None
    if row.state != State.CREATING and not late:
        return
    out.move(
        State.BUILDING,
        Trigger.CREATE_ACCEPTED,
        accepted.event_id,
        workspace_id=accepted.workspace_id,
        workspace_name=accepted.workspace_name,
        owner_name=accepted.owner_name,
        build_id=accepted.build_id,
        job_id=accepted.job_id,
    )
    known = out.ctx.facts.jobs.get(accepted.job_id)
    if known is not None:
        _on_job_changed(out, known, accepted.event_id)


def _on_create_rejected(out: _Outcome, rejected: ev.CreateRejected) -> None:
    row = out.row
    if rejected.command_id != row.command_id:
        return
    if _unresolved_command(row):
        # Coder refused the command whose timer already failed the chat: it
        # is resolved now, so the next call sends a new command, not this one.
        out.row = dataclasses.replace(row, last_error=rejected.reason, updated_at=out.ctx.now)
        return
    if row.state != State.CREATING:
        return
    out.move(State.FAILED, Trigger.CREATE_REJECTED, rejected.event_id, reason=rejected.reason)
    out.answer_failed(rejected.reason, rejected.reason)


def _fail_build(out: _Outcome, trigger: Trigger, event_id: str, reason: str) -> None:
    out.move(State.FAILED, trigger, event_id, reason=reason)
    out.answer_failed(reason, WORKSPACE_BUILD_FAILED + reason)


def _on_job_changed(out: _Outcome, job: Job, event_id: str) -> None:
    row = out.row
    if row.workspace_id is None or job.workspace_id != row.workspace_id:
        return
    if job.transition == "delete":
        if job.status == "succeeded" and row.state != State.NONE:
            out.move(State.NONE, Trigger.WORKSPACE_DELETED, event_id, **_CLEARED_WORKSPACE)
            out.answer_failed(WORKSPACE_DELETED, WORKSPACE_BUILD_FAILED + WORKSPACE_DELETED)
        return
    if job.job_id != row.job_id and job.transition == "start" and row.state == State.READY:
        _follow_restart(out, job)
        return
    late = row.state == State.FAILED and row.last_error == BUILD_TIMED_OUT
    if job.job_id != row.job_id or (row.state != State.BUILDING and not late):
        return
    if late and job.status != "succeeded":
        return
    if job.status == "succeeded":
        _build_succeeded(out, job, event_id)
    elif job.status == "failed":
        _fail_build(out, Trigger.BUILD_FAILED, event_id, job.error or BUILD_FAILED)
    elif job.status == "canceled":
        _fail_build(out, Trigger.BUILD_CANCELED, event_id, BUILD_CANCELED)


def _follow_restart(out: _Outcome, job: Job) -> None:
    """
    Bind the new build when Coder starts the workspace again (after a stop).

    Each build has new agents; without this the chat would keep waiting on
    the old build's agent and the next call would create a second workspace.
    """
    if job.status != "succeeded":
        return
    agent_id = job.agents[0].id if job.agents else None
    out.row = dataclasses.replace(
        out.row,
        job_id=job.job_id,
        build_id=job.build_id,
        agent_id=agent_id,
        agent_status="connected" if agent_id else "no_agent",
        updated_at=out.ctx.now,
    )


def _build_succeeded(out: _Outcome, job: Job, event_id: str) -> None:
    if not job.agents:
        out.move(State.READY, Trigger.BUILD_SUCCEEDED, event_id, agent_status="no_agent")
        out.answer_ready("no_agent")
        return
    agent_id = job.agents[0].id
    if agent_id in out.ctx.facts.agents_seen_at and out.ctx.timeouts.wait_for_startup_scripts:
        out.move(State.AGENT_WAITING, Trigger.BUILD_SUCCEEDED, event_id, agent_id=agent_id)
        _agent_lifecycle(out, out.ctx.facts.agent_lifecycles.get(agent_id), event_id)
        return
    if agent_id in out.ctx.facts.agents_seen_at:
        out.move(
            State.READY,
            Trigger.BUILD_SUCCEEDED,
            event_id,
            agent_id=agent_id,
            agent_status="connected",
        )
        out.answer_ready(None)
        return
    out.move(State.AGENT_WAITING, Trigger.BUILD_SUCCEEDED, event_id, agent_id=agent_id)


def _on_agent_seen(out: _Outcome, seen: ev.AgentSeen) -> None:
    row = out.row
    if row.state != State.AGENT_WAITING or row.agent_id != seen.agent_id:
        return
    if out.ctx.timeouts.wait_for_startup_scripts:
        _agent_lifecycle(out, seen.lifecycle_state, seen.event_id)
        return
    out.move(State.READY, Trigger.AGENT_CONNECTED, seen.event_id, agent_status="connected")
    out.answer_ready(None)


# Lifecycles in which the startup scripts are still running (codersdk
# WorkspaceAgentLifecycle); any other but `ready` is a terminal failure.
_SCRIPTS_RUNNING = frozenset({"created", "starting"})


def _agent_lifecycle(out: _Outcome, lifecycle: str | None, event_id: str) -> None:
    """
    Move a connected agent's chat on by its lifecycle, as Coder's WaitForAgentReady does.

    ``ready`` (or a reporter that does not say) answers at once; ``created``
    and ``starting`` wait for the scripts, up to the startup-script timeout;
    any other state answers with ``startup_scripts_failed``.
    """
    if lifecycle is None or lifecycle == "ready":
        out.move(State.READY, Trigger.AGENT_CONNECTED, event_id, agent_status="connected")
        out.answer_ready(None)
    elif lifecycle in _SCRIPTS_RUNNING:
        if out.row.agent_status != "connected":
            deadline = out.ctx.now + timedelta(seconds=out.ctx.timeouts.startup_script_s)
            out.move(
                State.AGENT_WAITING,
                Trigger.STARTUP_SCRIPTS_RUNNING,
                event_id,
                agent_status="connected",
                deadline=deadline,
            )
    else:
        out.move(
            State.READY,
            Trigger.STARTUP_SCRIPTS_FAILED,
            event_id,
            agent_status="connected",
            reason=f"startup scripts ended in {lifecycle}",
        )
        out.answer_ready(None, results.startup_failed(lifecycle))


def _on_timer(out: _Outcome, fired: ev.TimerFired) -> None:
    row = out.row
    if fired.version != row.version or row.deadline_at is None or row.deadline_at > out.ctx.now:
        return  # a stale timer: the chat moved on, or the deadline moved
    if row.state == State.CREATING:
        out.move(State.FAILED, Trigger.CREATE_TIMED_OUT, fired.event_id, reason=CREATE_TIMED_OUT)
        out.answer_failed(CREATE_TIMED_OUT, CREATE_TIMED_OUT)
    elif row.state == State.BUILDING:
        _fail_build(out, Trigger.BUILD_TIMED_OUT, fired.event_id, BUILD_TIMED_OUT)
    elif row.state == State.AGENT_WAITING and row.agent_status == "connected":
        # Connected, but its startup scripts outran their timeout: usable, say so.
        out.move(
            State.READY,
            Trigger.STARTUP_SCRIPTS_TIMED_OUT,
            fired.event_id,
            reason=results.STARTUP_SCRIPTS_TIMEOUT,
        )
        out.answer_ready(None, results.startup_timeout())
    elif row.state == State.AGENT_WAITING:
        out.move(
            State.AGENT_WAITING,
            Trigger.AGENT_CONNECT_TIMED_OUT,
            fired.event_id,
            reason=results.AGENT_TIMED_OUT,
            deadline=None,
        )
        out.answer_not_ready()
