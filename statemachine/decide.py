"""
Decide, for one chat and one event, the chat's next state and the effects that follow.

``decide`` is the whole of rules R4 to R12: given the chat (row and waiting
calls), an event, the facts storage knows and the time, it returns the new
chat and the effects as data. It never reads a clock or does I/O. The create
path (R4 to R8) is here; builds of the bound workspace, start and stop are in
``builds``, agent waits in ``agents``, the answers of each tool in ``answers``.
"""

from __future__ import annotations

from statemachine import agents, answers, builds, effects, ids, naming, results
from statemachine import events as ev
from statemachine.model import Chat, ChatWorkspace, Facts, Tool
from statemachine.outcome import (
    FAILED_EVENT,
    READY_EVENT,
    STATE_CHANGED,
    Context,
    Decision,
    Outcome,
)
from statemachine.states import IN_PROGRESS, State, Trigger

__all__ = [
    "BUILD_COMMAND",
    "BUILD_TIMED_OUT",
    "CREATE_COMMAND",
    "CREATE_TIMED_OUT",
    "FAILED_EVENT",
    "READY_EVENT",
    "STATE_CHANGED",
    "Context",
    "Decision",
    "decide",
]

CREATE_TIMED_OUT = results.CREATE_TIMED_OUT
BUILD_TIMED_OUT = results.BUILD_TIMED_OUT
CREATE_COMMAND = "coder.workspace.create.v1"
BUILD_COMMAND = builds.BUILD_COMMAND

_TOOLS = frozenset(t.value for t in Tool)
_CLEARED_WORKSPACE = builds.CLEARED_WORKSPACE


def decide(chat: Chat, event: ev.Event, ctx: Context) -> Decision:
    """
    Return the chat after ``event`` and the effects to perform.
    """
    out = Outcome(chat, ctx)
    match event:
        case ev.ToolCall():
            _on_tool_call(out, event)
        case ev.InvalidToolCall():
            _on_invalid_tool_call(out, event)
        case ev.CreateAccepted():
            _on_create_accepted(out, event)
        case ev.CreateRejected():
            _on_create_rejected(out, event)
        case ev.BuildQueued() | ev.BuildRejected():
            builds.on_command_answer(out, event)
        case ev.JobChanged():
            builds.on_job_changed(out, event.job, event.event_id)
        case ev.AgentSeen():
            agents.on_agent_seen(out, event)
        case ev.TimerFired():
            _on_timer(out, event)
    builds.proceed(out, event.event_id)
    return out.decision()


def _on_invalid_tool_call(out: Outcome, call: ev.InvalidToolCall) -> None:
    tool = Tool(call.tool) if call.tool in _TOOLS else Tool.CREATE
    if not _seen_before(out, call.tool_call_id, tool):
        out.answer(call.tool_call_id, results.error(call.error), is_error=True, tool=tool)


def _seen_before(out: Outcome, tool_call_id: str, tool: Tool) -> bool:
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
        out.answer(tool_call_id, content, is_error=bool(known.answer["is_error"]), tool=tool)
    return True


def _stopped(row: ChatWorkspace, facts: Facts) -> bool:
    if row.state == State.STOPPED:
        return True
    return row.state not in IN_PROGRESS and builds.latest_stopped(row, facts)


def _on_tool_call(out: Outcome, call: ev.ToolCall) -> None:
    if _seen_before(out, call.tool_call_id, call.tool):
        return
    if call.tool != Tool.CREATE:
        builds.on_call(out, call)
        return
    row = out.row
    if _stopped(row, out.ctx.facts):
        content = results.existing(row.full_name or "", "stopped", results.STOPPED)
        out.answer(call.tool_call_id, content, is_error=False, tool=Tool.CREATE)
        return
    if row.state in IN_PROGRESS:
        if row.state == State.AGENT_WAITING and row.deadline_at is None:
            # The agent timer already answered earlier calls; give this one its own wait.
            out.change(deadline_at=out.deadline(State.AGENT_WAITING))
        out.wait(call.tool_call_id, call.event_id, creator=False, tool=Tool.CREATE)
        return
    if row.state == State.READY and agents.reachable(row, out.ctx):
        content = results.existing(row.full_name or "", "already_exists", results.ALREADY_RUNNING)
        out.answer(call.tool_call_id, content, is_error=False, tool=Tool.CREATE)
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


def _start_create(out: Outcome, call: ev.ToolCall) -> None:
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
    out.wait(call.tool_call_id, call.event_id, creator=True, tool=Tool.CREATE)


def _on_create_accepted(out: Outcome, accepted: ev.CreateAccepted) -> None:
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
        builds.on_job_changed(out, known, accepted.event_id)


def _on_create_rejected(out: Outcome, rejected: ev.CreateRejected) -> None:
    row = out.row
    if rejected.command_id != row.command_id:
        return
    if _unresolved_command(row):
        # Coder refused the command whose timer already failed the chat: it
        # is resolved now, so the next call sends a new command, not this one.
        out.change(last_error=rejected.reason)
        return
    if row.state != State.CREATING:
        return
    out.move(State.FAILED, Trigger.CREATE_REJECTED, rejected.event_id, reason=rejected.reason)
    answers.failed(out, rejected.reason, rejected.reason, None)


def _on_timer(out: Outcome, fired: ev.TimerFired) -> None:
    row = out.row
    if fired.version != row.version or row.deadline_at is None or row.deadline_at > out.ctx.now:
        return  # a stale timer: the chat moved on, or the deadline moved
    if row.state == State.CREATING:
        out.move(State.FAILED, Trigger.CREATE_TIMED_OUT, fired.event_id, reason=CREATE_TIMED_OUT)
        answers.failed(out, CREATE_TIMED_OUT, CREATE_TIMED_OUT, None)
    elif row.state in (State.BUILDING, State.STOPPING):
        builds.fail_build(out, Trigger.BUILD_TIMED_OUT, fired.event_id, BUILD_TIMED_OUT)
    elif row.state == State.AGENT_WAITING:
        agents.timed_out(out, fired.event_id)
