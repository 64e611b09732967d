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


def created(full_name: str, agent_status: str | None = None) -> dict[str, Any]:
    """
    Answer the call that caused the create.
    """
    content: dict[str, Any] = {"created": True, "workspace_name": full_name}
    if agent_status == "no_agent":
        content["agent_status"] = "no_agent"
    elif agent_status == "not_ready":
        content["agent_status"] = "not_ready"
        content["agent_error"] = AGENT_TIMED_OUT
    return content


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
