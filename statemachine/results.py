"""
Build the contents of tool results (spec section 3), word for word.
"""

from __future__ import annotations

from typing import Any

ALREADY_BUILT = "workspace was already being built and is now ready"
ALREADY_RUNNING = "workspace is already running and reachable"
STOPPED = "workspace is stopped; use start_workspace to start it"
AGENT_TIMED_OUT = "timed out waiting for workspace agent"
TEMPLATE_REQUIRED = "template_id is required; use list_templates to find one"


STARTUP_SCRIPTS_FAILED = "startup_scripts_failed"
STARTUP_SCRIPTS_TIMEOUT = "startup_scripts_timeout"


def created(
    full_name: str, agent_status: str | None = None, startup: dict[str, str] | None = None
) -> dict[str, Any]:
    """
    Answer the call that caused the create; ``startup`` adds Coder's startup-script fields.
    """
    content: dict[str, Any] = {"created": True, "workspace_name": full_name}
    if agent_status == "no_agent":
        content["agent_status"] = "no_agent"
    elif agent_status == "not_ready":
        content["agent_status"] = "not_ready"
        content["agent_error"] = AGENT_TIMED_OUT
    return content | (startup or {})


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
