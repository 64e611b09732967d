"""
Table-driven tests of ``statemachine.decide``: every state against every event.

Each row says, for a chat in one state (with two calls waiting when the state
is in progress) and one event, which state follows and which tool results are
given, word for word as spec section 3 and rules R5 to R11 say. A pair that is
not in ``EXPECTED`` must change nothing and emit nothing.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from statemachine import decide, effects, ids, machine, results
from statemachine import events as ev
from statemachine.model import (
    Agent,
    AnsweredCall,
    Chat,
    ChatWorkspace,
    Facts,
    Job,
    Timeouts,
    Tool,
    Waiter,
)
from statemachine.states import State, Trigger

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
ENTERED = NOW - timedelta(hours=1)
CHAT = "chat-1"
OWNER = "owner-1"
TEMPLATE = "0f8fad5b-d9cb-469f-a165-70867728950e"
COMMAND = "command-current"
STALE_COMMAND = "command-stale"
WORKSPACE = "workspace-1"
NAME = "dev-1a2b"
OWNER_NAME = "alice"
FULL_NAME = "alice/dev-1a2b"
BUILD = "build-1"
JOB = "job-1"
AGENT = "agent-1"
OTHER_AGENT = "agent-2"
CREATOR = "call-creator"
OTHER = "call-other"
NEW_CALL = "call-new"
BAD_CALL = "call-bad"
INVALID_ERROR = "invalid template_id: invalid UUID length: 3"
REJECTION = "template version is archived: validation failed"
REFUSAL = "Forbidden."
BUSY = "A workspace build is already active.: A workspace build is already active."
JOB_ERROR = "terraform apply failed"
VERSION = 7

WAITERS = (Waiter(CREATOR, creator=True), Waiter(OTHER, creator=False))
WAITERS_IDS = (CREATOR, OTHER)
STARTER = "call-starter"
STOPPER = "call-stopper"
NEW_START = "call-new-start"
NEW_STOP = "call-new-stop"
BUILD_COMMAND = "command-build"
JOB_STOP = "job-stop"
JOB_START = "job-start-2"
BUILD_STOP = "build-stop"
BUILD_START = "build-start-2"
NEW_AGENT = "agent-3"
# A create, a start and a stop call waiting together on a start or stop.
MIXED = (
    Waiter(OTHER, creator=False),
    Waiter(STARTER, creator=False, tool=Tool.START),
    Waiter(STOPPER, creator=False, tool=Tool.STOP),
)


# Rows -------------------------------------------------------------------------


def _row(state: State, *, bound: bool, **changes: Any) -> ChatWorkspace:
    row = ChatWorkspace(
        CHAT,
        OWNER,
        state,
        VERSION,
        ENTERED,
        ENTERED,
        ENTERED,
        template_id=TEMPLATE,
        command_id=COMMAND,
        requested_name=NAME,
    )
    if bound:
        row = dataclasses.replace(
            row,
            workspace_id=WORKSPACE,
            workspace_name=NAME,
            owner_name=OWNER_NAME,
            build_id=BUILD,
            job_id=JOB,
        )
    return dataclasses.replace(row, **changes)


DUE = NOW - timedelta(seconds=1)  # a deadline that has passed


def _built(transition: str, job_id: str, *, agents: tuple[Agent, ...] = ()) -> Job:
    """
    Return a build that finished an hour ago: what the newest build was before the event.
    """
    return Job(
        job_id, WORKSPACE, f"build-of-{job_id}", transition, "succeeded", None, agents, ENTERED
    )


RUNNING = _built("start", JOB, agents=(Agent(AGENT, "main"),))
STOPPED_BUILD = _built("stop", "job-old-stop")

# row kind -> (chat, facts storage knows)
ROWS: dict[str, tuple[Chat, Facts]] = {
    "none": (Chat(ChatWorkspace.new(CHAT, OWNER, ENTERED)), Facts()),
    "none_after_delete": (Chat(_row(State.NONE, bound=False)), Facts()),
    "none_deleted": (
        Chat(_row(State.NONE, bound=False, last_error=results.WORKSPACE_DELETED)),
        Facts(),
    ),
    "creating": (Chat(_row(State.CREATING, bound=False, deadline_at=DUE), WAITERS), Facts()),
    "building": (Chat(_row(State.BUILDING, bound=True, deadline_at=DUE), WAITERS), Facts()),
    "agent_waiting": (
        Chat(_row(State.AGENT_WAITING, bound=True, agent_id=AGENT, deadline_at=DUE), WAITERS),
        Facts(),
    ),
    "ready": (
        Chat(_row(State.READY, bound=True, agent_id=AGENT, agent_status="connected")),
        Facts(agents_seen_at={AGENT: NOW - timedelta(seconds=5)}),
    ),
    "ready_agent_gone": (
        Chat(_row(State.READY, bound=True, agent_id=AGENT, agent_status="connected")),
        Facts(agents_seen_at={AGENT: NOW - timedelta(seconds=60)}),
    ),
    "failed": (Chat(_row(State.FAILED, bound=True, last_error=JOB_ERROR)), Facts()),
    "failed_create_timed_out": (
        Chat(_row(State.FAILED, bound=False, last_error=decide.CREATE_TIMED_OUT)),
        Facts(),
    ),
    "failed_build_timed_out": (
        Chat(_row(State.FAILED, bound=True, last_error=decide.BUILD_TIMED_OUT)),
        Facts(),
    ),
    # start_workspace and stop_workspace: a command in flight, a build bound, at rest.
    "building_start": (
        Chat(
            _row(
                State.BUILDING,
                bound=True,
                job_id=None,
                build_id=None,
                command_id=BUILD_COMMAND,
                deadline_at=DUE,
            ),
            MIXED,
        ),
        Facts(latest_builds={WORKSPACE: STOPPED_BUILD}),
    ),
    "stopping": (
        Chat(
            _row(
                State.STOPPING,
                bound=True,
                job_id=None,
                build_id=None,
                command_id=BUILD_COMMAND,
                deadline_at=DUE,
            ),
            MIXED,
        ),
        Facts(
            latest_builds={WORKSPACE: RUNNING}, agents_seen_at={AGENT: NOW - timedelta(seconds=5)}
        ),
    ),
    "stopping_bound": (
        Chat(
            _row(
                State.STOPPING,
                bound=True,
                job_id=JOB_STOP,
                build_id=BUILD_STOP,
                command_id=BUILD_COMMAND,
                deadline_at=DUE,
            ),
            MIXED,
        ),
        Facts(),
    ),
    "failed_stop_timed_out": (
        Chat(
            _row(
                State.FAILED,
                bound=True,
                job_id=JOB_STOP,
                build_id=BUILD_STOP,
                last_error=decide.BUILD_TIMED_OUT,
            )
        ),
        Facts(),
    ),
    "stopped": (
        Chat(_row(State.STOPPED, bound=True, job_id=JOB_STOP, build_id=BUILD_STOP)),
        Facts(latest_builds={WORKSPACE: _built("stop", JOB_STOP)}),
    ),
}


# Events -----------------------------------------------------------------------


def _job(
    status: str,
    *,
    transition: str = "start",
    job_id: str = JOB,
    error: str | None = None,
    agents: tuple[Agent, ...] = (),
) -> Job:
    return Job(job_id, WORKSPACE, BUILD, transition, status, error, agents, NOW)


def _changed(job: Job) -> Callable[[ChatWorkspace], ev.Event]:
    return lambda _row: ev.JobChanged(f"event-{job.job_id}-{job.status}", job)


def _accepted(command_id: str) -> Callable[[ChatWorkspace], ev.Event]:
    return lambda _row: ev.CreateAccepted(
        "event-accepted", command_id, CHAT, WORKSPACE, NAME, OWNER_NAME, BUILD, JOB
    )


def _rejected(command_id: str) -> Callable[[ChatWorkspace], ev.Event]:
    return lambda _row: ev.CreateRejected("event-rejected", command_id, CHAT, REJECTION)


START_CALL = ev.ToolCall("event-start", NEW_START, CHAT, OWNER, "", None, (), None, Tool.START)
STOP_CALL = ev.ToolCall("event-stop", NEW_STOP, CHAT, OWNER, "", None, (), None, Tool.STOP)
TOOL_CALL = ev.ToolCall(
    "event-call",
    NEW_CALL,
    CHAT,
    OWNER,
    TEMPLATE,
    "dev",
    (("region", "eu"), ("cpu", "2")),
    "go-template",
)
TWO_AGENTS = (Agent(AGENT, "main"), Agent(OTHER_AGENT, "sidecar"))

EVENTS: dict[str, Callable[[ChatWorkspace], ev.Event]] = {
    "tool_call": lambda _row: TOOL_CALL,
    "invalid_tool_call": lambda _row: ev.InvalidToolCall(
        "event-bad", BAD_CALL, CHAT, "create_workspace", INVALID_ERROR
    ),
    "create_accepted": _accepted(COMMAND),
    "create_accepted_stale": _accepted(STALE_COMMAND),
    "create_rejected": _rejected(COMMAND),
    "create_rejected_stale": _rejected(STALE_COMMAND),
    "job_pending": _changed(_job("pending")),
    "job_running": _changed(_job("running")),
    "job_canceling": _changed(_job("canceling")),
    "job_succeeded_with_agents": _changed(_job("succeeded", agents=TWO_AGENTS)),
    "job_succeeded_without_agents": _changed(_job("succeeded")),
    "job_failed": _changed(_job("failed", error=JOB_ERROR)),
    "job_failed_without_error": _changed(_job("failed")),
    "job_canceled": _changed(_job("canceled")),
    "delete_succeeded": _changed(_job("succeeded", transition="delete", job_id="job-delete")),
    "stop_running": _changed(_job("running", transition="stop", job_id=JOB_STOP)),
    "stop_succeeded": _changed(_job("succeeded", transition="stop", job_id=JOB_STOP)),
    "stop_failed": _changed(_job("failed", transition="stop", job_id=JOB_STOP, error=JOB_ERROR)),
    "stop_canceled": _changed(_job("canceled", transition="stop", job_id=JOB_STOP)),
    "next_stop_running": _changed(_job("running", transition="stop", job_id="job-stop-2")),
    "start_running": _changed(_job("running", job_id=JOB_START)),
    "start_succeeded": _changed(
        _job("succeeded", job_id=JOB_START, agents=(Agent(NEW_AGENT, "main"),))
    ),
    "start_call": lambda _row: START_CALL,
    "stop_call": lambda _row: STOP_CALL,
    "stop_queued": lambda _row: ev.BuildQueued(
        "event-queued", BUILD_COMMAND, CHAT, WORKSPACE, "stop", BUILD_STOP, JOB_STOP
    ),
    "start_queued": lambda _row: ev.BuildQueued(
        "event-queued", BUILD_COMMAND, CHAT, WORKSPACE, "start", BUILD_START, JOB_START
    ),
    "build_refused": lambda _row: ev.BuildRejected(
        "event-refused", BUILD_COMMAND, CHAT, 403, REFUSAL
    ),
    "build_busy": lambda _row: ev.BuildRejected("event-busy", BUILD_COMMAND, CHAT, 409, BUSY),
    "agent_seen": lambda _row: ev.AgentSeen("event-seen", AGENT, NOW),
    "other_agent_seen": lambda _row: ev.AgentSeen("event-seen-other", OTHER_AGENT, NOW),
    "timer_current": lambda row: ev.TimerFired("event-timer", CHAT, row.version),
    "timer_stale": lambda row: ev.TimerFired("event-timer-stale", CHAT, row.version - 1),
}


# Expected outcomes --------------------------------------------------------------


def _error(message: str) -> tuple[bool, dict[str, Any]]:
    return True, results.error(message)


def _ok(content: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    return False, content


ALREADY_BUILT = _ok(
    {
        "created": False,
        "workspace_name": FULL_NAME,
        "status": "already_exists",
        "message": "workspace was already being built and is now ready",
    }
)
ALREADY_RUNNING = _ok(
    {
        "created": False,
        "workspace_name": FULL_NAME,
        "status": "already_exists",
        "message": "workspace is already running and reachable",
    }
)


def _both_failed(creator_message: str, reason: str) -> dict[str, tuple[bool, dict[str, Any]]]:
    return {
        CREATOR: _error(creator_message),
        OTHER: _error(f"existing workspace build failed: {reason}"),
    }


def _build_failed(reason: str) -> dict[str, tuple[bool, dict[str, Any]]]:
    return _both_failed(f"workspace build failed: {reason}", reason)


@dataclass(frozen=True)
class Expect:
    state: State
    answers: Mapping[str, tuple[bool, Mapping[str, Any]]] = field(default_factory=dict)
    waits: Mapping[str, bool] = field(default_factory=dict)  # tool_call_id -> creator
    creates: bool = False
    builds: tuple[str, ...] = ()  # transitions of the start or stop commands sent


# The tool of each call the events make.
TOOLS = {NEW_START: Tool.START, NEW_STOP: Tool.STOP, STARTER: Tool.START, STOPPER: Tool.STOP}
STOPPED_ANSWER = _ok(results.existing(FULL_NAME, "stopped", results.STOPPED))
NO_WORKSPACE = _error(results.NO_WORKSPACE)
WORKSPACE_GONE = _error(results.WORKSPACE_GONE)


def _started(build_id: str | None, agent_status: str | None = None) -> tuple[bool, dict[str, Any]]:
    return _ok(results.started(FULL_NAME, build_id, agent_status))


def _stopped(build_id: str | None) -> tuple[bool, dict[str, Any]]:
    return _ok(results.stopped(FULL_NAME, build_id))


def _build_error(prefix: str, reason: str, build_id: str | None) -> tuple[bool, dict[str, Any]]:
    return True, results.build_error(prefix + reason, build_id)


CREATES = Expect(State.CREATING, waits={NEW_CALL: True}, creates=True)
DELETED_WHILE_WAITING = Expect(State.NONE, _build_failed("workspace was deleted"))

EXPECTED: dict[tuple[str, str], Expect] = {
    # R4, R6: a call creates from none, failed, or ready with the agent gone.
    ("none", "tool_call"): CREATES,
    ("none_after_delete", "tool_call"): CREATES,
    ("failed", "tool_call"): CREATES,
    ("failed_create_timed_out", "tool_call"): CREATES,
    ("failed_build_timed_out", "tool_call"): CREATES,
    # A build that succeeds after its timer failed the chat is bound after all.
    ("failed_build_timed_out", "job_succeeded_with_agents"): Expect(State.AGENT_WAITING),
    ("failed_build_timed_out", "job_succeeded_without_agents"): Expect(State.READY),
    ("failed_build_timed_out", "delete_succeeded"): Expect(State.NONE),
    ("ready_agent_gone", "tool_call"): CREATES,
    # R5: a call while in progress waits and creates nothing.
    ("creating", "tool_call"): Expect(State.CREATING, waits={NEW_CALL: False}),
    ("building", "tool_call"): Expect(State.BUILDING, waits={NEW_CALL: False}),
    ("agent_waiting", "tool_call"): Expect(State.AGENT_WAITING, waits={NEW_CALL: False}),
    # R6: a reachable workspace answers at once.
    ("ready", "tool_call"): Expect(State.READY, {NEW_CALL: ALREADY_RUNNING}),
    # R8
    ("creating", "create_accepted"): Expect(State.BUILDING),
    ("failed_create_timed_out", "create_accepted"): Expect(State.BUILDING),
    # A late refusal resolves the timed-out command: the chat stays failed.
    ("failed_create_timed_out", "create_rejected"): Expect(State.FAILED),
    ("creating", "create_rejected"): Expect(State.FAILED, _both_failed(REJECTION, REJECTION)),
    # R9
    ("building", "job_succeeded_with_agents"): Expect(State.AGENT_WAITING),
    ("building", "job_succeeded_without_agents"): Expect(
        State.READY,
        {
            CREATOR: _ok(
                {"created": True, "workspace_name": FULL_NAME, "agent_status": "no_agent"}
            ),
            OTHER: ALREADY_BUILT,
        },
    ),
    ("building", "job_failed"): Expect(State.FAILED, _build_failed(JOB_ERROR)),
    ("building", "job_failed_without_error"): Expect(State.FAILED, _build_failed("build failed")),
    ("building", "job_canceled"): Expect(State.FAILED, _build_failed("build was canceled")),
    # R7: a delete that succeeded unbinds the workspace.
    ("building", "delete_succeeded"): DELETED_WHILE_WAITING,
    ("agent_waiting", "delete_succeeded"): DELETED_WHILE_WAITING,
    ("ready", "delete_succeeded"): Expect(State.NONE),
    ("ready_agent_gone", "delete_succeeded"): Expect(State.NONE),
    ("failed", "delete_succeeded"): Expect(State.NONE),
    # R10
    ("agent_waiting", "agent_seen"): Expect(
        State.READY,
        {CREATOR: _ok({"created": True, "workspace_name": FULL_NAME}), OTHER: ALREADY_BUILT},
    ),
    # R11 (and the create timer, which the spec leaves to us).
    ("creating", "timer_current"): Expect(
        State.FAILED,
        _both_failed(
            "timed out waiting for Coder to accept the create",
            "timed out waiting for Coder to accept the create",
        ),
    ),
    ("building", "timer_current"): Expect(
        State.FAILED, _build_failed("timed out waiting for workspace build")
    ),
    ("agent_waiting", "timer_current"): Expect(
        State.AGENT_WAITING,
        dict.fromkeys(
            (CREATOR, OTHER),
            _ok(
                {
                    "created": True,
                    "workspace_name": FULL_NAME,
                    "agent_status": "not_ready",
                    "agent_error": "timed out waiting for workspace agent",
                }
            ),
        ),
    ),
}
# start_workspace and stop_workspace ----------------------------------------------------

# Builds nobody asked for are followed from every bound state (build_started).
FOLLOWED = {
    "stop_running": Expect(State.STOPPING),
    "next_stop_running": Expect(State.STOPPING),
    "stop_succeeded": Expect(State.STOPPED),
    "stop_failed": Expect(State.FAILED),
    "stop_canceled": Expect(State.FAILED),
    "start_running": Expect(State.BUILDING),
    "start_succeeded": Expect(State.AGENT_WAITING),
}
for _kind in ("ready", "ready_agent_gone", "failed", "failed_build_timed_out"):
    EXPECTED |= {(_kind, event): expect for event, expect in FOLLOWED.items()}
for _kind in ("building", "agent_waiting"):
    # The create's calls: a stop that ends it answers them as R7, a failure as R5.
    EXPECTED |= {
        (_kind, "stop_running"): Expect(State.STOPPING),
        (_kind, "stop_succeeded"): Expect(
            State.STOPPED, dict.fromkeys(WAITERS_IDS, STOPPED_ANSWER)
        ),
        (_kind, "stop_failed"): Expect(State.FAILED, _build_failed(JOB_ERROR)),
        (_kind, "stop_canceled"): Expect(State.FAILED, _build_failed("build was canceled")),
        (_kind, "next_stop_running"): Expect(State.STOPPING),
        (_kind, "start_running"): Expect(State.BUILDING),
        (_kind, "start_succeeded"): Expect(State.AGENT_WAITING),
        (_kind, "start_call"): Expect(State(_kind), waits={NEW_START: False}),
        (_kind, "stop_call"): Expect(State(_kind), waits={NEW_STOP: False}),
    }
EXPECTED |= {
    # No workspace: Coder's own errors.
    **{
        (kind, call): Expect(state, {call_id: NO_WORKSPACE})
        for kind, state in (
            ("none", State.NONE),
            ("none_after_delete", State.NONE),
            ("failed_create_timed_out", State.FAILED),
        )
        for call, call_id in (("start_call", NEW_START), ("stop_call", NEW_STOP))
    },
    ("none_deleted", "tool_call"): CREATES,
    ("none_deleted", "start_call"): Expect(State.NONE, {NEW_START: WORKSPACE_GONE}),
    ("none_deleted", "stop_call"): Expect(State.NONE, {NEW_STOP: WORKSPACE_GONE}),
    # While the create runs, start and stop wait for it.
    ("creating", "start_call"): Expect(State.CREATING, waits={NEW_START: False}),
    ("creating", "stop_call"): Expect(State.CREATING, waits={NEW_STOP: False}),
    # Running: a start answers at once, or waits for a silent agent; a stop asks Coder.
    ("ready", "start_call"): Expect(State.READY, {NEW_START: _started(None)}),
    ("ready", "stop_call"): Expect(State.STOPPING, waits={NEW_STOP: False}, builds=("stop",)),
    ("ready_agent_gone", "start_call"): Expect(State.AGENT_WAITING, waits={NEW_START: False}),
    ("ready_agent_gone", "stop_call"): Expect(
        State.STOPPING, waits={NEW_STOP: False}, builds=("stop",)
    ),
    # Failed: Coder's tools try anyway.
    ("failed", "start_call"): Expect(State.BUILDING, waits={NEW_START: False}, builds=("start",)),
    ("failed", "stop_call"): Expect(State.STOPPING, waits={NEW_STOP: False}, builds=("stop",)),
    ("failed_build_timed_out", "start_call"): Expect(
        State.BUILDING, waits={NEW_START: False}, builds=("start",)
    ),
    ("failed_build_timed_out", "stop_call"): Expect(
        State.STOPPING, waits={NEW_STOP: False}, builds=("stop",)
    ),
    # Stopped: a stop answers at once, a start asks Coder, a create is told R7.
    ("stopped", "tool_call"): Expect(State.STOPPED, {NEW_CALL: STOPPED_ANSWER}),
    ("stopped", "stop_call"): Expect(State.STOPPED, {NEW_STOP: _stopped(None)}),
    ("stopped", "start_call"): Expect(State.BUILDING, waits={NEW_START: False}, builds=("start",)),
    ("stopped", "delete_succeeded"): Expect(State.NONE),
    ("stopped", "start_running"): Expect(State.BUILDING),
    ("stopped", "start_succeeded"): Expect(State.AGENT_WAITING),
    ("stopped", "job_pending"): Expect(State.BUILDING),
    ("stopped", "job_running"): Expect(State.BUILDING),
    ("stopped", "job_canceling"): Expect(State.BUILDING),
    ("stopped", "job_succeeded_with_agents"): Expect(State.AGENT_WAITING),
    ("stopped", "job_succeeded_without_agents"): Expect(State.READY),
    ("stopped", "job_failed"): Expect(State.FAILED),
    ("stopped", "job_failed_without_error"): Expect(State.FAILED),
    ("stopped", "job_canceled"): Expect(State.FAILED),
    ("stopped", "next_stop_running"): Expect(State.STOPPING),
    # A stop build that succeeds after its timer failed the chat is bound after all.
    ("failed_stop_timed_out", "stop_succeeded"): Expect(State.STOPPED),
    ("failed_stop_timed_out", "tool_call"): CREATES,
    ("failed_stop_timed_out", "start_call"): Expect(
        State.BUILDING, waits={NEW_START: False}, builds=("start",)
    ),
    ("failed_stop_timed_out", "stop_call"): Expect(
        State.STOPPING, waits={NEW_STOP: False}, builds=("stop",)
    ),
    ("failed_stop_timed_out", "delete_succeeded"): Expect(State.NONE),
    ("failed_stop_timed_out", "next_stop_running"): Expect(State.STOPPING),
    ("failed_stop_timed_out", "start_running"): Expect(State.BUILDING),
    ("failed_stop_timed_out", "start_succeeded"): Expect(State.AGENT_WAITING),
    ("failed_stop_timed_out", "job_pending"): Expect(State.BUILDING),
    ("failed_stop_timed_out", "job_running"): Expect(State.BUILDING),
    ("failed_stop_timed_out", "job_canceling"): Expect(State.BUILDING),
    ("failed_stop_timed_out", "job_succeeded_with_agents"): Expect(State.AGENT_WAITING),
    ("failed_stop_timed_out", "job_succeeded_without_agents"): Expect(State.READY),
    ("failed_stop_timed_out", "job_failed"): Expect(State.FAILED),
    ("failed_stop_timed_out", "job_failed_without_error"): Expect(State.FAILED),
    ("failed_stop_timed_out", "job_canceled"): Expect(State.FAILED),
}


def _mixed(row_kind: str, state: State, build: str | None) -> dict[tuple[str, str], Expect]:
    """
    Return what a create, a start and a stop call waiting on a start or stop get, event by event.

    ``build`` is the build bound before the event; a start build that ends
    answers the create and the start and then asks for the stop; a stop
    build that ends answers the create and the stop and then asks for the start.
    """
    after_start = {OTHER: ALREADY_BUILT}
    start_failed = {OTHER: _error(f"existing workspace build failed: {JOB_ERROR}")}

    def stopping_next(answers: dict[str, Any]) -> Expect:
        return Expect(State.STOPPING, answers, builds=("stop",))

    def building_next(answers: dict[str, Any]) -> Expect:
        return Expect(State.BUILDING, answers, builds=("start",))

    def start_error(reason: str) -> dict[str, Any]:
        return {
            OTHER: _error(f"existing workspace build failed: {reason}"),
            STARTER: _build_error(results.START_BUILD_FAILED, reason, BUILD),
        }

    found = {
        "tool_call": Expect(state, waits={NEW_CALL: False}),
        "start_call": Expect(state, waits={NEW_START: False}),
        "stop_call": Expect(state, waits={NEW_STOP: False}),
        "job_pending": Expect(State.BUILDING),
        "job_running": Expect(State.BUILDING),
        "job_canceling": Expect(State.BUILDING),
        "job_succeeded_without_agents": stopping_next(
            after_start | {STARTER: _started(BUILD, "no_agent")}
        ),
        "job_failed": stopping_next(start_error(JOB_ERROR)),
        "job_failed_without_error": stopping_next(start_error("build failed")),
        "job_canceled": stopping_next(start_error("build was canceled")),
        "delete_succeeded": Expect(
            State.NONE,
            {
                OTHER: _error("existing workspace build failed: workspace was deleted"),
                STARTER: WORKSPACE_GONE,
                STOPPER: WORKSPACE_GONE,
            },
        ),
        "stop_running": Expect(State.STOPPING),
        "next_stop_running": Expect(State.STOPPING),
        "stop_succeeded": building_next({OTHER: STOPPED_ANSWER, STOPPER: _stopped(build)}),
        "stop_canceled": building_next(
            {
                OTHER: _error("existing workspace build failed: build was canceled"),
                STOPPER: _build_error(results.STOP_BUILD_FAILED, "build was canceled", build),
            }
        ),
        "stop_failed": building_next(
            start_failed | {STOPPER: _build_error(results.STOP_BUILD_FAILED, JOB_ERROR, build)}
        ),
        "start_running": Expect(State.BUILDING),
        "start_succeeded": Expect(State.AGENT_WAITING),
    }
    return {(row_kind, event): expect for event, expect in found.items()}


TIMED_OUT = "timed out waiting for workspace build"
EXPECTED |= _mixed("building_start", State.BUILDING, BUILD) | {
    ("building_start", "job_succeeded_with_agents"): Expect(State.AGENT_WAITING),
    ("building_start", "start_queued"): Expect(State.BUILDING),
    ("building_start", "stop_running"): Expect(State.STOPPING),
    # Refused: the start gets Coder's response; the workspace is still stopped.
    ("building_start", "build_refused"): Expect(
        State.STOPPED,
        {STARTER: _error(REFUSAL), OTHER: STOPPED_ANSWER, STOPPER: _stopped(None)},
    ),
    ("building_start", "timer_current"): Expect(
        State.STOPPING,
        {
            OTHER: _error(f"existing workspace build failed: {TIMED_OUT}"),
            STARTER: _build_error(results.START_BUILD_FAILED, TIMED_OUT, None),
        },
        builds=("stop",),
    ),
}
EXPECTED |= _mixed("stopping", State.STOPPING, BUILD) | {
    # The newest build is a start whose agent already beat: ready, then the stop.
    ("stopping", "job_succeeded_with_agents"): Expect(
        State.STOPPING, {OTHER: ALREADY_BUILT, STARTER: _started(BUILD)}, builds=("stop",)
    ),
    ("stopping", "stop_queued"): Expect(State.STOPPING),
    # Refused: the stop gets Coder's response; the workspace still runs.
    ("stopping", "build_refused"): Expect(
        State.READY, {STOPPER: _error(REFUSAL), OTHER: ALREADY_BUILT, STARTER: _started(None)}
    ),
    ("stopping", "timer_current"): Expect(
        State.BUILDING,
        {
            OTHER: _error(f"existing workspace build failed: {TIMED_OUT}"),
            STOPPER: _build_error(results.STOP_BUILD_FAILED, TIMED_OUT, None),
        },
        builds=("start",),
    ),
}
EXPECTED |= _mixed("stopping_bound", State.STOPPING, BUILD_STOP) | {
    ("stopping_bound", "job_succeeded_with_agents"): Expect(State.AGENT_WAITING),
    ("stopping_bound", "stop_running"): Expect(State.STOPPING),
    ("stopping_bound", "timer_current"): Expect(
        State.BUILDING,
        {
            OTHER: _error(f"existing workspace build failed: {TIMED_OUT}"),
            STOPPER: _build_error(results.STOP_BUILD_FAILED, TIMED_OUT, BUILD_STOP),
        },
        builds=("start",),
    ),
}
del EXPECTED["stopping_bound", "stop_running"]  # already bound and running: nothing changes

# R1, R15: an invalid call gets its error in every state and changes nothing.
for _kind, (_chat, _) in ROWS.items():
    EXPECTED[_kind, "invalid_tool_call"] = Expect(
        _chat.row.state, {BAD_CALL: _error(INVALID_ERROR)}
    )

E = TypeVar("E")
PAIRS = [(row, event) for row in ROWS for event in EVENTS]


def _context(facts: Facts, now: datetime = NOW) -> decide.Context:
    return decide.Context(now, facts, Timeouts(), random.Random(0))


def _decide(row_kind: str, event_kind: str) -> tuple[Chat, decide.Decision]:
    chat, facts = ROWS[row_kind]
    event = EVENTS[event_kind](chat.row)
    if isinstance(event, ev.JobChanged):
        # As the handler loads it: the update just saved is its workspace's newest build.
        facts = dataclasses.replace(
            facts, latest_builds={**facts.latest_builds, event.job.workspace_id: event.job}
        )
    return chat, decide.decide(chat, event, _context(facts))


def _of(kind: type[E], decision: decide.Decision) -> list[E]:
    return [e for e in decision.effects if isinstance(e, kind)]


def _answers(decision: decide.Decision) -> dict[str, tuple[bool, Mapping[str, Any]]]:
    answers = _of(effects.Answer, decision)
    assert len({a.tool_call_id for a in answers}) == len(answers), "a call answered twice"
    return {a.tool_call_id: (a.is_error, a.content) for a in answers}


def _creates(decision: decide.Decision) -> list[effects.Publish]:
    return [p for p in _of(effects.Publish, decision) if p.ce_type == decide.CREATE_COMMAND]


def _builds(decision: decide.Decision) -> list[effects.Publish]:
    return [p for p in _of(effects.Publish, decision) if p.ce_type == decide.BUILD_COMMAND]


# Tests --------------------------------------------------------------------------


def test_the_table_covers_every_state() -> None:
    assert {chat.row.state for chat, _ in ROWS.values()} == set(State)


def test_every_expected_row_names_a_known_state_and_event() -> None:
    assert set(EXPECTED) <= set(PAIRS)


@pytest.mark.parametrize(("row_kind", "event_kind"), PAIRS)
def test_each_state_and_event_give_the_spec_state_and_answers(
    row_kind: str, event_kind: str
) -> None:
    chat, decision = _decide(row_kind, event_kind)
    expect = EXPECTED.get((row_kind, event_kind))
    if expect is None:
        assert decision.chat == chat
        assert decision.effects == ()
        return
    assert decision.chat.row.state == expect.state
    assert _answers(decision) == expect.answers
    waits = {w.tool_call_id: w.creator for w in _of(effects.Wait, decision)}
    assert waits == expect.waits
    assert len(_creates(decision)) == int(expect.creates)
    assert tuple(p.data["transition"] for p in _builds(decision)) == expect.builds
    answered = set(expect.answers)
    kept = [w for w in chat.waiters if w.tool_call_id not in answered]
    new = [
        Waiter(call, creator=creator, tool=TOOLS.get(call, Tool.CREATE))
        for call, creator in expect.waits.items()
    ]
    assert list(decision.chat.waiters) == kept + new
    for answer in _of(effects.Answer, decision):
        assert answer.tool == TOOLS.get(answer.tool_call_id, Tool.CREATE)


@pytest.mark.parametrize(("row_kind", "event_kind"), PAIRS)
def test_each_state_change_is_recorded_once_with_the_next_version_and_published(
    row_kind: str, event_kind: str
) -> None:
    chat, decision = _decide(row_kind, event_kind)
    records = _of(effects.RecordTransition, decision)
    before, after = chat.row, decision.chat.row
    assert after.version == before.version + len(records)
    if not records:
        assert after.state == before.state
        return
    state = before.state
    expected = []
    for version, record in enumerate(records, start=before.version + 1):
        assert (record.trigger, record.from_state, record.to_state) in machine.allowed()
        assert record.from_state == state
        assert record.version == version
        types = [decide.STATE_CHANGED]
        if record.to_state != state and record.to_state in {State.READY, State.FAILED}:
            ready = record.to_state == State.READY
            types.append(decide.READY_EVENT if ready else decide.FAILED_EVENT)
        expected += [
            (t, ids.workspace_event(CHAT, version, t), version, record.to_state.value)
            for t in types
        ]
        state = record.to_state
    assert state == after.state
    published = [
        (p.ce_type, p.ce_id, p.data["version"], p.data["to_state"])
        for p in _of(effects.Publish, decision)
        if p.topic == effects.Topic.WORKSPACE_EVENTS
    ]
    assert published == expected


@pytest.mark.parametrize("row_kind", ["none", "failed", "ready_agent_gone"])
def test_a_create_command_carries_the_chosen_name_and_sorted_parameters(row_kind: str) -> None:
    _, decision = _decide(row_kind, "tool_call")
    (command,) = _creates(decision)
    row = decision.chat.row
    assert command.topic == effects.Topic.WORKSPACE_COMMANDS
    assert command.key == CHAT
    assert command.ce_id == row.command_id == ids.create_command(CHAT, row.version)
    assert command.data == {
        "command_id": row.command_id,
        "chat_id": CHAT,
        "owner_id": OWNER,
        "template_id": TEMPLATE,
        "name": "dev",
        "rich_parameter_values": [
            {"name": "cpu", "value": "2"},
            {"name": "region", "value": "eu"},
        ],
    }
    assert row.requested_name == "dev"
    assert row.workspace_id is row.job_id is row.agent_id is None
    assert row.deadline_at == NOW + timedelta(seconds=Timeouts().create_s)


def test_build_success_binds_the_first_agent_of_the_build() -> None:
    _, decision = _decide("building", "job_succeeded_with_agents")
    assert decision.chat.row.agent_id == AGENT
    assert decision.chat.row.deadline_at == NOW + timedelta(seconds=Timeouts().agent_connect_s)


def test_build_success_is_ready_at_once_when_the_agent_already_sent_a_heartbeat() -> None:
    chat, _ = ROWS["building"]
    facts = Facts(agents_seen_at={AGENT: NOW - timedelta(minutes=1)})
    event = EVENTS["job_succeeded_with_agents"](chat.row)
    decision = decide.decide(chat, event, _context(facts))
    assert decision.chat.row.state == State.READY
    assert decision.chat.row.agent_id == AGENT
    assert _answers(decision) == {
        CREATOR: _ok({"created": True, "workspace_name": FULL_NAME}),
        OTHER: ALREADY_BUILT,
    }


def test_a_heartbeat_after_the_agent_timer_still_makes_the_chat_ready() -> None:
    chat, facts = ROWS["agent_waiting"]
    timed_out = decide.decide(chat, EVENTS["timer_current"](chat.row), _context(facts))
    assert timed_out.chat.waiters == ()
    assert timed_out.chat.row.deadline_at is None
    later = decide.decide(timed_out.chat, EVENTS["agent_seen"](chat.row), _context(facts))
    assert later.chat.row.state == State.READY
    assert _answers(later) == {}
    assert decide.READY_EVENT in {p.ce_type for p in _of(effects.Publish, later)}


def test_a_call_after_the_agent_timer_waits_with_a_deadline_of_its_own() -> None:
    chat, facts = ROWS["agent_waiting"]
    timed_out = decide.decide(chat, EVENTS["timer_current"](chat.row), _context(facts))
    later = NOW + timedelta(seconds=10)
    decision = decide.decide(timed_out.chat, TOOL_CALL, _context(facts, later))
    assert decision.chat.waiters == (Waiter(NEW_CALL, creator=False),)
    assert decision.chat.row.version == timed_out.chat.row.version
    deadline = later + timedelta(seconds=Timeouts().agent_connect_s)
    assert decision.chat.row.deadline_at == deadline
    fired = ev.TimerFired("event-timer-2", CHAT, decision.chat.row.version)
    second = decide.decide(decision.chat, fired, _context(facts, deadline))
    assert _answers(second) == dict.fromkeys(
        [NEW_CALL], EXPECTED["agent_waiting", "timer_current"].answers[CREATOR]
    )


@pytest.mark.parametrize("row_kind", ["creating", "building", "agent_waiting"])
def test_a_timer_before_its_deadline_changes_nothing(row_kind: str) -> None:
    chat, facts = ROWS[row_kind]
    early = ev.TimerFired("event-timer", CHAT, chat.row.version)
    decision = decide.decide(chat, early, _context(facts, DUE - timedelta(seconds=1)))
    assert decision == decide.Decision(chat, ())


@pytest.mark.parametrize("row_kind", ["ready", "ready_agent_gone", "failed", "stopped"])
def test_a_call_for_a_stopped_workspace_is_answered_stopped_and_creates_nothing(
    row_kind: str,
) -> None:
    chat, facts = ROWS[row_kind]
    stop = _job("succeeded", transition="stop", job_id="job-stop")
    facts = dataclasses.replace(facts, latest_builds={WORKSPACE: stop})
    decision = decide.decide(chat, TOOL_CALL, _context(facts))
    assert decision.chat == chat
    assert _answers(decision) == {
        NEW_CALL: _ok(
            {
                "created": False,
                "workspace_name": FULL_NAME,
                "status": "stopped",
                "message": "workspace is stopped; use start_workspace to start it",
            }
        )
    }


@pytest.mark.parametrize("row_kind", ["building", "agent_waiting", "stopping"])
def test_a_call_while_a_build_runs_waits_for_it_even_when_a_stop_is_the_newest_build(
    row_kind: str,
) -> None:
    chat, facts = ROWS[row_kind]
    stop = _job("succeeded", transition="stop", job_id="job-stop")
    facts = dataclasses.replace(facts, latest_builds={WORKSPACE: stop})
    decision = decide.decide(chat, TOOL_CALL, _context(facts))
    assert _answers(decision) == {}
    assert [w.tool_call_id for w in _of(effects.Wait, decision)] == [NEW_CALL]


def test_a_ready_workspace_without_agent_answers_already_running() -> None:
    row = _row(State.READY, bound=True, agent_status="no_agent")
    decision = decide.decide(Chat(row), TOOL_CALL, _context(Facts()))
    assert decision.chat.row == row
    assert _answers(decision) == {NEW_CALL: ALREADY_RUNNING}


def test_a_create_accepted_after_its_job_succeeded_applies_the_job_at_once() -> None:
    chat, _ = ROWS["creating"]
    facts = Facts(jobs={JOB: _job("succeeded")})
    decision = decide.decide(chat, EVENTS["create_accepted"](chat.row), _context(facts))
    records = _of(effects.RecordTransition, decision)
    assert [(r.from_state, r.to_state, r.version) for r in records] == [
        (State.CREATING, State.BUILDING, VERSION + 1),
        (State.BUILDING, State.READY, VERSION + 2),
    ]
    assert decision.chat.row.version == VERSION + 2
    assert set(_answers(decision)) == {CREATOR, OTHER}


@pytest.mark.parametrize("row_kind", ["none", "ready", "failed"])
@pytest.mark.parametrize("is_error", [False, True])
def test_a_call_seen_before_is_answered_again_with_its_stored_answer(
    row_kind: str, is_error: bool
) -> None:
    chat, facts = ROWS[row_kind]
    stored = {"is_error": is_error, "content": {"error": "x"} if is_error else {"created": True}}
    facts = dataclasses.replace(facts, calls={NEW_CALL: AnsweredCall(NEW_CALL, CHAT, stored)})
    decision = decide.decide(chat, TOOL_CALL, _context(facts))
    assert decision.chat == chat
    assert _answers(decision) == {NEW_CALL: (is_error, stored["content"])}


@pytest.mark.parametrize("row_kind", ["creating", "building", "agent_waiting"])
@pytest.mark.parametrize("call_id", [CREATOR, OTHER])
def test_a_waiting_call_seen_again_changes_nothing(row_kind: str, call_id: str) -> None:
    chat, facts = ROWS[row_kind]
    again = dataclasses.replace(TOOL_CALL, tool_call_id=call_id)
    assert decide.decide(chat, again, _context(facts)) == decide.Decision(chat, ())


# With wait_for_startup_scripts on (Coder's workspacereadiness.go) -------------------

SCRIPTS = Timeouts(wait_for_startup_scripts=True)
WAITING_CHAT, _ = ROWS["agent_waiting"]
SCRIPTS_RUNNING_CHAT = Chat(
    dataclasses.replace(WAITING_CHAT.row, agent_status="connected"), WAITERS
)


def _scripts(chat: Chat, event: ev.Event, facts: Facts | None = None) -> decide.Decision:
    return decide.decide(
        chat, event, decide.Context(NOW, facts or Facts(), SCRIPTS, random.Random(0))
    )


def _seen(lifecycle: str | None) -> ev.AgentSeen:
    return ev.AgentSeen(f"event-seen-{lifecycle}", AGENT, NOW, lifecycle)


def _script_decisions() -> list[decide.Decision]:
    timer = ev.TimerFired("event-timer", CHAT, SCRIPTS_RUNNING_CHAT.row.version)
    return [
        _scripts(WAITING_CHAT, _seen("starting")),
        _scripts(SCRIPTS_RUNNING_CHAT, _seen("ready")),
        _scripts(SCRIPTS_RUNNING_CHAT, _seen("start_error")),
        _scripts(SCRIPTS_RUNNING_CHAT, timer),
        *_start_stop_decisions(),
    ]


def _start_stop_decisions() -> list[decide.Decision]:
    """
    Return the start and stop decisions the table's rows do not reach, for the coverage test.
    """
    failed_build = dataclasses.replace(RUNNING, status="failed", error=JOB_ERROR)
    unseen = Facts(latest_builds={WORKSPACE: RUNNING})
    building_start, _ = ROWS["building_start"]
    stopping, _ = ROWS["stopping"]
    ready, ready_facts = ROWS["ready"]
    waiting, _ = ROWS["agent_waiting"]
    after_agent_timer = Chat(dataclasses.replace(waiting.row, deadline_at=None))
    stop_stopped = Facts(latest_builds={WORKSPACE: STOPPED_BUILD})
    refused = EVENTS["build_refused"](building_start.row)
    return [
        decide.decide(building_start, refused, _context(Facts({}, {}, {WORKSPACE: failed_build}))),
        decide.decide(stopping, refused, _context(Facts({}, {}, {WORKSPACE: failed_build}))),
        decide.decide(stopping, refused, _context(unseen)),
        decide.decide(
            ready,
            START_CALL,
            _context(dataclasses.replace(ready_facts, latest_builds=stop_stopped.latest_builds)),
        ),
        decide.decide(after_agent_timer, STOP_CALL, _context(Facts())),
    ]


def test_a_connected_agent_whose_scripts_run_keeps_the_chat_waiting_on_a_script_timer() -> None:
    decision = _scripts(WAITING_CHAT, _seen("starting"))
    row = decision.chat.row
    assert row.state == State.AGENT_WAITING
    assert row.agent_status == "connected"
    assert row.deadline_at == NOW + timedelta(seconds=SCRIPTS.startup_script_s)
    (moved,) = _of(effects.RecordTransition, decision)
    assert moved.trigger == Trigger.STARTUP_SCRIPTS_RUNNING
    assert _answers(decision) == {}
    # The next heartbeat of a still-starting agent changes nothing.
    assert _of(effects.RecordTransition, _scripts(decision.chat, _seen("starting"))) == []


def test_scripts_that_finish_make_the_chat_ready_with_the_usual_answers() -> None:
    decision = _scripts(SCRIPTS_RUNNING_CHAT, _seen("ready"))
    assert decision.chat.row.state == State.READY
    assert _answers(decision) == {
        CREATOR: _ok({"created": True, "workspace_name": FULL_NAME}),
        OTHER: ALREADY_BUILT,
    }


def test_scripts_that_fail_answer_ready_with_startup_scripts_failed_and_the_lifecycle() -> None:
    decision = _scripts(SCRIPTS_RUNNING_CHAT, _seen("start_error"))
    assert decision.chat.row.state == State.READY
    failed = {"startup_scripts": "startup_scripts_failed", "lifecycle_state": "start_error"}
    answers = _answers(decision)
    assert answers[CREATOR] == _ok({"created": True, "workspace_name": FULL_NAME} | failed)
    assert answers[OTHER][1]["startup_scripts"] == "startup_scripts_failed"


def test_scripts_that_outrun_their_timer_answer_ready_with_startup_scripts_timeout() -> None:
    timer = ev.TimerFired("event-timer", CHAT, SCRIPTS_RUNNING_CHAT.row.version)
    decision = _scripts(SCRIPTS_RUNNING_CHAT, timer)
    assert decision.chat.row.state == State.READY
    (moved,) = _of(effects.RecordTransition, decision)
    assert moved.trigger == Trigger.STARTUP_SCRIPTS_TIMED_OUT
    timeout = {"startup_scripts": "startup_scripts_timeout"}
    assert _answers(decision)[CREATOR] == _ok(
        {"created": True, "workspace_name": FULL_NAME} | timeout
    )


def test_a_build_whose_agent_already_beat_while_starting_waits_for_its_scripts() -> None:
    chat, _ = ROWS["building"]
    facts = Facts(agents_seen_at={AGENT: NOW}, agent_lifecycles={AGENT: "starting"})
    decision = _scripts(chat, EVENTS["job_succeeded_with_agents"](chat.row), facts)
    triggers = [t.trigger for t in _of(effects.RecordTransition, decision)]
    assert triggers == [Trigger.BUILD_SUCCEEDED, Trigger.STARTUP_SCRIPTS_RUNNING]
    assert decision.chat.row.state == State.AGENT_WAITING
    assert _answers(decision) == {}


def test_without_the_script_wait_a_starting_agent_is_ready_at_its_first_heartbeat() -> None:
    decision = decide.decide(WAITING_CHAT, _seen("starting"), _context(Facts()))
    assert decision.chat.row.state == State.READY


def test_every_transition_of_the_table_is_reached_by_some_decision() -> None:
    reached = {
        (r.trigger, r.from_state, r.to_state)
        for row_kind, event_kind in PAIRS
        for r in _of(effects.RecordTransition, _decide(row_kind, event_kind)[1])
    }
    reached |= {
        (r.trigger, r.from_state, r.to_state)
        for decision in _script_decisions()
        for r in _of(effects.RecordTransition, decision)
    }
    assert reached <= machine.allowed()
    assert reached == machine.allowed()


def test_the_transitions_machine_agrees_with_the_table() -> None:
    for trigger, source, dest in machine.allowed():
        assert machine.MACHINE.get_transitions(trigger.value, source.value, dest.value)
    built = [
        t
        for event in machine.MACHINE.events.values()
        for transitions in event.transitions.values()
        for t in transitions
    ]
    assert len(built) == len(machine.allowed())


def test_an_illegal_move_is_refused_by_the_table() -> None:
    with pytest.raises(machine.IllegalTransitionError):
        machine.check(Trigger.AGENT_CONNECTED, State.NONE, State.READY)
