"""
Derive output event ids from their inputs, so a republished record keeps its id.
"""

from __future__ import annotations

import hashlib
import uuid

NAMESPACE = uuid.UUID("6b0f3c1e-8d8a-4c55-9a57-0e2f6f9a1d42")


_NAMESPACE_BYTES = NAMESPACE.bytes


def derive(*parts: object) -> str:
    """
    Return a UUIDv5 that depends only on ``parts``.

    The same value as ``uuid.uuid5(NAMESPACE, "/".join(parts))`` (a test checks
    it), computed without building UUID objects: it runs for every output.
    """
    name = "/".join(map(str, parts)).encode()
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


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


def build_command(chat_id: str, version: int) -> str:
    """
    Return the id of the start or stop command a chat sent as it entered ``version``.
    """
    return derive("build", chat_id, version)


def workspace_event(chat_id: str, version: int, ce_type: str) -> str:
    """
    Return the id of a workspace event of one transition.
    """
    return derive(ce_type, chat_id, version)
