"""
Build the contents of tool results (spec section 3), word for word.

create_workspace answers as the project always did; start_workspace and
stop_workspace answer with the shapes of Coder's own tools
(``coderd/x/chatd/chattool/startworkspace.go``, ``stopworkspace.go``):
``started``/``stopped``, ``build_id`` of the build waited for or
``no_build: true`` when none was, and create's agent fields.
"""

from __future__ import annotations

from typing import Any

ALREADY_BUILT = "workspace was already being built and is now ready"
ALREADY_RUNNING = "workspace is already running and reachable"
STOPPED = "workspace is stopped; use start_workspace to start it"
AGENT_TIMED_OUT = "timed out waiting for workspace agent"
TEMPLATE_REQUIRED = "template_id is required; use list_templates to find one"

# Reasons a chat fails or a waiting call is told why (R8 to R11).
CREATE_TIMED_OUT = "timed out waiting for Coder to accept the create"
BUILD_TIMED_OUT = "timed out waiting for workspace build"
BUILD_FAILED = "build failed"
BUILD_CANCELED = "build was canceled"
WORKSPACE_DELETED = "workspace was deleted"
EXISTING_FAILED = "existing workspace build failed: "
WORKSPACE_BUILD_FAILED = "workspace build failed: "

# start_workspace and stop_workspace, as Coder's tools word them.
NO_WORKSPACE = "chat has no workspace; use create_workspace first"
WORKSPACE_GONE = "workspace was deleted; use create_workspace to make a new one"
START_BUILD_FAILED = "workspace start build failed: "
STOP_BUILD_FAILED = "workspace stop build failed: "

STARTUP_SCRIPTS_FAILED = "startup_scripts_failed"
STARTUP_SCRIPTS_TIMEOUT = "startup_scripts_timeout"


def _agent_fields(agent_status: str | None) -> dict[str, Any]:
    if agent_status == "no_agent":
        return {"agent_status": "no_agent"}
    if agent_status == "not_ready":
        return {"agent_status": "not_ready", "agent_error": AGENT_TIMED_OUT}
    return {}


def _build_fields(build_id: str | None) -> dict[str, Any]:
    # Coder's setBuildID and setNoBuild: the build waited for, or none.
    return {"build_id": build_id} if build_id else {"no_build": True}


def created(
    full_name: str, agent_status: str | None = None, startup: dict[str, str] | None = None
) -> dict[str, Any]:
    """
    Answer the call that caused the create; ``startup`` adds Coder's startup-script fields.
    """
    content: dict[str, Any] = {"created": True, "workspace_name": full_name}
    return content | _agent_fields(agent_status) | (startup or {})


def started(
    full_name: str,
    build_id: str | None,
    agent_status: str | None = None,
    startup: dict[str, str] | None = None,
) -> dict[str, Any]:
    """
    Answer a start_workspace call: the workspace runs; ``build_id`` is the build it waited for.
    """
    content: dict[str, Any] = {"started": True, "workspace_name": full_name}
    return content | _build_fields(build_id) | _agent_fields(agent_status) | (startup or {})


def stopped(full_name: str, build_id: str | None) -> dict[str, Any]:
    """
    Answer a stop_workspace call: the workspace is stopped; ``build_id`` is the stop build.
    """
    content: dict[str, Any] = {"stopped": True, "workspace_name": full_name}
    return content | _build_fields(build_id)


def startup_failed(lifecycle_state: str) -> dict[str, str]:
    """
    Say that the agent's startup scripts ended in ``lifecycle_state``, not ``ready``.
    """
    return {"startup_scripts": STARTUP_SCRIPTS_FAILED, "lifecycle_state": lifecycle_state}


def startup_timeout() -> dict[str, str]:
    """
    Say that the startup scripts did not finish within the startup-script timeout.
    """
    return {"startup_scripts": STARTUP_SCRIPTS_TIMEOUT}


def existing(full_name: str, status: str, message: str) -> dict[str, Any]:
    """
    Answer a call that found a workspace already there.
    """
    return {"created": False, "workspace_name": full_name, "status": status, "message": message}


def error(message: str) -> dict[str, Any]:
    """
    Wrap an error message as the content of an error result.
    """
    return {"error": message}


def build_error(message: str, build_id: str | None) -> dict[str, Any]:
    """
    Wrap a start or stop build's failure, naming the build as Coder's newBuildError does.
    """
    return error(message) | ({"build_id": build_id} if build_id else {})
