"""
Wait for the agent of a succeeded start build, and for its startup scripts (R9, R10, R6).
"""

from __future__ import annotations

from datetime import timedelta

from statemachine import answers, results
from statemachine import events as ev
from statemachine.model import ChatWorkspace, Job
from statemachine.outcome import Context, Outcome
from statemachine.states import State, Trigger

# Lifecycles in which the startup scripts are still running (codersdk
# WorkspaceAgentLifecycle); any other but `ready` is a terminal failure.
_SCRIPTS_RUNNING = frozenset({"created", "starting"})


def reachable(row: ChatWorkspace, ctx: Context) -> bool:
    """
    Tell whether the bound agent beat recently enough, or the build has no agent (R6).
    """
    if row.agent_status == "no_agent":
        return True
    seen = ctx.facts.agents_seen_at.get(row.agent_id) if row.agent_id else None
    return seen is not None and ctx.now - seen <= timedelta(seconds=ctx.timeouts.agent_inactivity_s)


def build_succeeded(out: Outcome, job: Job, event_id: str) -> None:
    """
    Bind the first agent of a succeeded start build and wait for it, or be ready at once (R9).
    """
    if not job.agents:
        out.move(State.READY, Trigger.BUILD_SUCCEEDED, event_id, agent_status="no_agent")
        answers.ready(out, "no_agent")
        return
    agent_id = job.agents[0].id
    seen = agent_id in out.ctx.facts.agents_seen_at
    if seen and out.ctx.timeouts.wait_for_startup_scripts:
        out.move(State.AGENT_WAITING, Trigger.BUILD_SUCCEEDED, event_id, agent_id=agent_id)
        lifecycle(out, out.ctx.facts.agent_lifecycles.get(agent_id), event_id)
    elif seen:
        out.move(
            State.READY,
            Trigger.BUILD_SUCCEEDED,
            event_id,
            agent_id=agent_id,
            agent_status="connected",
        )
        answers.ready(out, None)
    else:
        out.move(State.AGENT_WAITING, Trigger.BUILD_SUCCEEDED, event_id, agent_id=agent_id)


def on_agent_seen(out: Outcome, seen: ev.AgentSeen) -> None:
    """
    Move a chat waiting on this agent to ``ready`` (R10), or on to its startup scripts.
    """
    row = out.row
    if row.state != State.AGENT_WAITING or row.agent_id != seen.agent_id:
        return
    if out.ctx.timeouts.wait_for_startup_scripts:
        lifecycle(out, seen.lifecycle_state, seen.event_id)
        return
    out.move(State.READY, Trigger.AGENT_CONNECTED, seen.event_id, agent_status="connected")
    answers.ready(out, None)


def lifecycle(out: Outcome, state: str | None, event_id: str) -> None:
    """
    Move a connected agent's chat on by its lifecycle, as Coder's WaitForAgentReady does.

    ``ready`` (or a reporter that does not say) answers at once; ``created``
    and ``starting`` wait for the scripts, up to the startup-script timeout;
    any other state answers with ``startup_scripts_failed``.
    """
    if state is None or state == "ready":
        out.move(State.READY, Trigger.AGENT_CONNECTED, event_id, agent_status="connected")
        answers.ready(out, None)
    elif state in _SCRIPTS_RUNNING:
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
            reason=f"startup scripts ended in {state}",
        )
        answers.ready(out, None, results.startup_failed(state))


def timed_out(out: Outcome, event_id: str) -> None:
    """
    End an agent wait at its deadline: scripts that ran too long, or no agent (R11).
    """
    if out.row.agent_status == "connected":
        # Connected, but its startup scripts outran their timeout: usable, say so.
        out.move(
            State.READY,
            Trigger.STARTUP_SCRIPTS_TIMED_OUT,
            event_id,
            reason=results.STARTUP_SCRIPTS_TIMEOUT,
        )
        answers.ready(out, None, results.startup_timeout())
        return
    out.move(
        State.AGENT_WAITING,
        Trigger.AGENT_CONNECT_TIMED_OUT,
        event_id,
        reason=results.AGENT_TIMED_OUT,
        deadline=None,
    )
    answers.not_ready(out)
