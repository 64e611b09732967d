"""
Derive output event ids from their inputs, so a republished record keeps its id.
"""

from __future__ import annotations

import uuid

NAMESPACE = uuid.UUID("6b0f3c1e-8d8a-4c55-9a57-0e2f6f9a1d42")


def derive(*parts: object) -> str:
    """
    Return a UUIDv5 that depends only on ``parts``.
    """
    return str(uuid.uuid5(NAMESPACE, "/".join(str(part) for part in parts)))


def tool_result(tool_call_id: str) -> str:
    """
    Return the one event id of a tool call's result (R14).
    """
    return derive("tool_result", tool_call_id)


def create_command(chat_id: str, version: int) -> str:
    """
    Return the id of the create command sent when a chat entered ``creating``.
    """
    return derive("create", chat_id, version)


def workspace_event(chat_id: str, version: int, ce_type: str) -> str:
    """
    Return the id of a workspace event of one transition.
    """
    return derive(ce_type, chat_id, version)
