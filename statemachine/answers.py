"""
Answer the calls waiting on a chat when what they wait for ends, each as its tool would.

A wait ends when the workspace is ready (or its agent timed out), stopped,
failed, deleted or refused by Coder. Each function answers the waiting calls
that end has an answer for, and leaves the others waiting: a stop_workspace
call is not answered by the workspace becoming ready, a start_workspace call
not by it stopping; ``builds.proceed`` then asks Coder for what they need.
"""

from __future__ import annotations

from statemachine import results
from statemachine.model import Tool
from statemachine.outcome import Outcome


def ready(out: Outcome, agent_status: str | None, startup: dict[str, str] | None = None) -> None:
    """
    Answer create and start calls: the workspace runs and its agent is reachable (R9, R10).
    """
    row = out.row
    name = row.full_name or ""
    for waiter in out.waiting(Tool.CREATE, Tool.START):
        if waiter.tool == Tool.START:
            content = results.started(name, row.build_id, agent_status, startup)
        elif waiter.creator:
            content = results.created(name, agent_status, startup)
        else:
            content = results.existing(name, "already_exists", results.ALREADY_BUILT)
            content |= startup or {}
        out.answer_waiter(waiter, content, is_error=False)


def not_ready(out: Outcome) -> None:
    """
    Answer create and start calls when the agent did not connect in time (R11).
    """
    row = out.row
    name = row.full_name or ""
    for waiter in out.waiting(Tool.CREATE, Tool.START):
        if waiter.tool == Tool.START:
            content = results.started(name, row.build_id, "not_ready")
        else:
            content = results.created(name, "not_ready")
        out.answer_waiter(waiter, content, is_error=False)


def stopped(out: Outcome) -> None:
    """
    Answer stop calls (``stopped: true``) and create calls (R7): the workspace is stopped.
    """
    row = out.row
    name = row.full_name or ""
    for waiter in out.waiting(Tool.CREATE, Tool.STOP):
        if waiter.tool == Tool.STOP:
            content = results.stopped(name, row.build_id)
        else:
            content = results.existing(name, "stopped", results.STOPPED)
        out.answer_waiter(waiter, content, is_error=False)


def failed(out: Outcome, reason: str, creator_error: str, transition: str | None) -> None:
    """
    Answer the calls a failure ends (R5, R8, R9, R11).

    Create calls always: the creator gets ``creator_error``, the others
    ``existing workspace build failed: <reason>``. Start calls when a start
    build failed, stop calls when a stop build failed (Coder's ``workspace
    start build failed``, ``workspace stop build failed``); ``transition`` is
    None when no build was involved (a create refused or timed out, a delete).
    """
    row = out.row
    for waiter in out.waiting(Tool.CREATE):
        message = creator_error if waiter.creator else results.EXISTING_FAILED + reason
        out.answer_waiter(waiter, results.error(message), is_error=True)
    failing = {
        "start": (Tool.START, results.START_BUILD_FAILED),
        "stop": (Tool.STOP, results.STOP_BUILD_FAILED),
    }
    if transition in failing:
        tool, prefix = failing[transition]
        for waiter in out.waiting(tool):
            out.answer_waiter(
                waiter, results.build_error(prefix + reason, row.build_id), is_error=True
            )


def unbound(out: Outcome) -> None:
    """
    Answer start and stop calls of a chat without a workspace, as Coder's tools do.
    """
    gone = out.row.last_error == results.WORKSPACE_DELETED
    message = results.WORKSPACE_GONE if gone else results.NO_WORKSPACE
    for waiter in out.waiting(Tool.START, Tool.STOP):
        out.answer_waiter(waiter, results.error(message), is_error=True)


def refused(out: Outcome, tool: Tool, reason: str) -> None:
    """
    Answer the calls whose command Coder refused with Coder's response.
    """
    for waiter in out.waiting(tool):
        out.answer_waiter(waiter, results.error(reason), is_error=True)
