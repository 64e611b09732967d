"""
Follow the builds of a chat's workspace, and ask Coder for start and stop builds.

The chat follows the newest build of its bound workspace, whoever asked for
it: a start build is ``building`` (then ``agent_waiting`` and ``ready``), a
stop build ``stopping`` (then ``stopped``). start_workspace and
stop_workspace calls ask for a build only from a resting state (``ready``,
``agent_waiting``, ``stopped``, ``failed``), so one command at a time is in
flight per chat; calls that arrive while a command or build runs wait for it,
and ``proceed`` asks for what they still need once it ends, as Coder's tools
do behind their mutex ("wait for it, then stop if still needed").
"""

from __future__ import annotations

from statemachine import agents, answers, effects, ids, jobs, results
from statemachine import events as ev
from statemachine.model import ChatWorkspace, Facts, Job, Tool
from statemachine.outcome import Outcome
from statemachine.states import IN_PROGRESS, State, Trigger

BUILD_COMMAND = "coder.workspace.build.v1"
START, STOP = "start", "stop"
# The state a build of each transition puts the chat in, and back.
_INTO = {START: State.BUILDING, STOP: State.STOPPING}
_REQUESTED = {State.BUILDING: START, State.STOPPING: STOP}
_TOOL = {START: Tool.START, STOP: Tool.STOP}
_NO_BUILD = {"job_id": None, "build_id": None, "agent_id": None, "agent_status": None}
CLEARED_WORKSPACE = {"workspace_id": None, "workspace_name": None, "owner_name": None} | _NO_BUILD
# Coder's answer when a build is already active ("A workspace build is already active.").
_CONFLICT = 409


def latest_stopped(row: ChatWorkspace, facts: Facts) -> bool:
    """
    Tell whether the newest build of the bound workspace is a stop that succeeded (R7).
    """
    latest = facts.latest_builds.get(row.workspace_id) if row.workspace_id else None
    return latest is not None and latest.transition == STOP and latest.status == "succeeded"


# Tool calls ----------------------------------------------------------------------


def on_call(out: Outcome, call: ev.ToolCall) -> None:
    """
    Answer a start_workspace or stop_workspace call, or keep it waiting (and ask Coder).
    """
    row, tool = out.row, call.tool
    if row.workspace_id is None and row.state != State.CREATING:
        gone = row.last_error == results.WORKSPACE_DELETED
        message = results.WORKSPACE_GONE if gone else results.NO_WORKSPACE
        out.answer(call.tool_call_id, results.error(message), is_error=True, tool=tool)
        return
    if row.state in IN_PROGRESS:
        if row.state == State.AGENT_WAITING and row.deadline_at is None and tool == Tool.START:
            # The agent timer already answered earlier calls; give this one its own wait.
            out.change(deadline_at=out.deadline(State.AGENT_WAITING))
        out.wait(call.tool_call_id, call.event_id, creator=False, tool=tool)
        return  # proceed() asks for a stop now if nothing else waits for the agent
    stopped = row.state == State.STOPPED or latest_stopped(row, out.ctx.facts)
    name = row.full_name or ""
    if tool == Tool.STOP and stopped:
        out.answer(call.tool_call_id, results.stopped(name, None), is_error=False, tool=tool)
        return
    if tool == Tool.START and row.state == State.READY and not stopped:
        if agents.reachable(row, out.ctx):
            status = "no_agent" if row.agent_status == "no_agent" else None
            content = results.started(name, None, status)
            out.answer(call.tool_call_id, content, is_error=False, tool=tool)
            return
        # Running, but its agent went silent: wait for it as Coder's start does,
        # without a build (build_id cleared: the answer says no_build).
        out.wait(call.tool_call_id, call.event_id, creator=False, tool=tool)
        out.move(
            State.AGENT_WAITING,
            Trigger.AGENT_SILENT,
            call.event_id,
            build_id=None,
            agent_status=None,
        )
        return
    out.wait(call.tool_call_id, call.event_id, creator=False, tool=tool)
    request(out, START if tool == Tool.START else STOP, call.event_id)


def request(out: Outcome, transition: str, event_id: str) -> None:
    """
    Send one start or stop command for the bound workspace and wait for its build.
    """
    row = out.row
    command_id = ids.build_command(row.chat_id, row.version + 1)
    trigger = Trigger.START_REQUESTED if transition == START else Trigger.STOP_REQUESTED
    # A stop keeps the running agent bound until the workspace is stopped: if
    # Coder refuses the stop, the chat is back where it was, agent and all.
    changes = _NO_BUILD if transition == START else {"job_id": None, "build_id": None}
    out.move(_INTO[transition], trigger, event_id, command_id=command_id, **changes)
    data = {
        "command_id": command_id,
        "chat_id": row.chat_id,
        "workspace_id": row.workspace_id,
        "transition": transition,
    }
    out.publish(effects.Topic.WORKSPACE_COMMANDS, BUILD_COMMAND, command_id, data)


def proceed(out: Outcome, event_id: str) -> None:
    """
    Once nothing runs, answer what the chat's state answers and ask for what calls still need.

    Called after every event. While a command or build runs, everyone
    waits. In ``agent_waiting``, stop calls wait for create and start calls
    to get their agent first (Coder's mutex), then stop. At rest, leftover
    calls are answered by the state; the oldest start or stop call that is
    still not served sends its command.
    """
    row = out.row
    if not out.waiters or row.state in (State.CREATING, State.BUILDING, State.STOPPING):
        return
    if row.workspace_id is None:
        answers.unbound(out)
        return
    if row.state == State.AGENT_WAITING:
        if out.waiting(Tool.STOP) and not out.waiting(Tool.CREATE, Tool.START):
            request(out, STOP, event_id)
        return
    if row.state == State.READY:
        answers.ready(out, "no_agent" if row.agent_status == "no_agent" else None)
    elif row.state == State.STOPPED:
        answers.stopped(out)
    else:
        reason = row.last_error or results.BUILD_FAILED
        answers.failed(out, reason, results.EXISTING_FAILED + reason, None)
    needing = out.waiting(Tool.START, Tool.STOP)
    if needing:
        request(out, START if needing[0].tool == Tool.START else STOP, event_id)


# Coder's answers to build commands -------------------------------------------------


def on_command_answer(out: Outcome, answer: ev.BuildQueued | ev.BuildRejected) -> None:
    """
    Apply Coder's answer to a start or stop command.
    """
    if isinstance(answer, ev.BuildQueued):
        _on_build_queued(out, answer)
    else:
        _on_build_rejected(out, answer)


def _on_build_queued(out: Outcome, queued: ev.BuildQueued) -> None:
    """
    Bind the build Coder queued for the chat's command, unless the chat already follows it.
    """
    row = out.row
    if (
        queued.command_id != row.command_id
        or row.job_id is not None
        or _REQUESTED.get(row.state) != queued.transition
        or queued.workspace_id != row.workspace_id
    ):
        return  # an older command, a duplicate, or its build already seen
    out.change(job_id=queued.job_id, build_id=queued.build_id)
    known = out.ctx.facts.jobs.get(queued.job_id)
    if known is not None:
        _progress(out, known, queued.event_id)


def _on_build_rejected(out: Outcome, rejected: ev.BuildRejected) -> None:
    """
    Answer the calls of a refused command with Coder's response; the chat goes back.

    Back to what the newest build of the workspace says: a start that
    succeeded is ``ready`` (or ``agent_waiting``), a stop ``stopped``, a
    failure ``failed``. A newest build still running, or one that did what
    was asked for, is followed as the command's would have been. A 409 (a build
    is already active) is not a refusal of what the calls want: the chat
    waits for that build, follows it when its updates come, and asks again
    afterwards if still needed.
    """
    row = out.row
    requested = _REQUESTED.get(row.state)
    if requested is None or rejected.command_id != row.command_id or row.job_id is not None:
        return
    if rejected.status_code == _CONFLICT:
        return
    answers.refused(out, _TOOL[requested], rejected.reason)
    latest = out.ctx.facts.latest_builds.get(row.workspace_id or "")
    if latest is None:
        out.move(State.FAILED, Trigger.BUILD_REJECTED, rejected.event_id, reason=rejected.reason)
    elif latest.transition == "delete":
        on_job_changed(out, latest, rejected.event_id)
    elif latest.status not in jobs.TERMINAL or (latest.transition, latest.status) == (
        requested,
        "succeeded",
    ):
        _new_build(out, latest, rejected.event_id)
    else:
        _back_to(out, latest, rejected)


def _back_to(out: Outcome, latest: Job, rejected: ev.BuildRejected) -> None:
    """
    Move a chat whose command Coder refused to the state its newest, finished build says.
    """
    reason, event_id, trigger = rejected.reason, rejected.event_id, Trigger.BUILD_REJECTED
    if latest.status != "succeeded":
        out.move(State.FAILED, trigger, event_id, reason=reason, job_id=latest.job_id)
    elif latest.transition == STOP:
        out.move(State.STOPPED, trigger, event_id, reason=reason, job_id=latest.job_id)
    else:
        # Running: its agent as a succeeded start build binds it (R9), no build waited for.
        agent_id = latest.agents[0].id if latest.agents else None
        seen = agent_id is None or agent_id in out.ctx.facts.agents_seen_at
        status = None if not seen else "connected" if agent_id else "no_agent"
        out.move(
            State.READY if seen else State.AGENT_WAITING,
            trigger,
            event_id,
            reason=reason,
            job_id=latest.job_id,
            agent_id=agent_id,
            agent_status=status,
        )


# Job updates ----------------------------------------------------------------------


def on_job_changed(out: Outcome, job: Job, event_id: str) -> None:
    """
    Apply a job update of the bound workspace: its bound build's, a newer build's, or a delete.
    """
    row = out.row
    if row.workspace_id is None or job.workspace_id != row.workspace_id:
        return
    if job.transition == "delete":
        if job.status == "succeeded" and row.state != State.NONE:
            _deleted(out, event_id)
        return
    if job.job_id == row.job_id:
        _progress(out, job, event_id)
    elif _newest(out, job):
        _new_build(out, job, event_id)


def _deleted(out: Outcome, event_id: str) -> None:
    out.move(
        State.NONE,
        Trigger.WORKSPACE_DELETED,
        event_id,
        last_error=results.WORKSPACE_DELETED,
        **CLEARED_WORKSPACE,
    )
    reason = results.WORKSPACE_DELETED
    answers.failed(out, reason, results.WORKSPACE_BUILD_FAILED + reason, None)


def _newest(out: Outcome, job: Job) -> bool:
    latest = out.ctx.facts.latest_builds.get(job.workspace_id)
    return latest is None or latest.job_id == job.job_id


def _new_build(out: Outcome, job: Job, event_id: str) -> None:
    """
    Follow a build of the workspace newer than the bound one.

    The build of the chat's own command (or one just like it) is bound
    silently; any other start or stop build, asked for by someone else or the
    one Coder was busy with, moves the chat (``build_started``).
    """
    row = out.row
    if row.job_id is None and _REQUESTED.get(row.state) == job.transition:
        out.change(job_id=job.job_id, build_id=job.build_id)
    else:
        out.move(
            _INTO[job.transition],
            Trigger.BUILD_STARTED,
            event_id,
            job_id=job.job_id,
            build_id=job.build_id,
            agent_id=None,
            agent_status=None,
        )
    _progress(out, job, event_id)


def _progress(out: Outcome, job: Job, event_id: str) -> None:
    """
    Apply the status of the bound build (R9); a build that ends after its timer is bound late.
    """
    row = out.row
    late = row.state == State.FAILED and row.last_error == results.BUILD_TIMED_OUT
    if row.state not in (State.BUILDING, State.STOPPING) and not late:
        return
    if late and job.status != "succeeded":
        return
    if job.status == "succeeded" and job.transition == STOP:
        out.move(State.STOPPED, Trigger.BUILD_SUCCEEDED, event_id, agent_id=None, agent_status=None)
        answers.stopped(out)
    elif job.status == "succeeded":
        agents.build_succeeded(out, job, event_id)
    elif job.status == "failed":
        fail_build(out, Trigger.BUILD_FAILED, event_id, job.error or results.BUILD_FAILED)
    elif job.status == "canceled":
        fail_build(out, Trigger.BUILD_CANCELED, event_id, results.BUILD_CANCELED)


def fail_build(out: Outcome, trigger: Trigger, event_id: str, reason: str) -> None:
    """
    Fail the chat's running build and answer the calls its failure ends (R9, R11).
    """
    transition = STOP if out.row.state == State.STOPPING else START
    out.move(State.FAILED, trigger, event_id, reason=reason)
    answers.failed(out, reason, results.WORKSPACE_BUILD_FAILED + reason, transition)
