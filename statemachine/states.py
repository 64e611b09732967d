"""
Name the states of a chat's workspace and the triggers that move between them.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """
    Say where a chat's workspace is in its life (spec section 1).
    """

    NONE = "none"
    CREATING = "creating"
    BUILDING = "building"
    AGENT_WAITING = "agent_waiting"
    READY = "ready"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class Trigger(StrEnum):
    """
    Say what moved a chat from one state to another.
    """

    TOOL_CALL = "tool_call"
    CREATE_ACCEPTED = "create_accepted"
    CREATE_REJECTED = "create_rejected"
    CREATE_TIMED_OUT = "create_timed_out"
    BUILD_SUCCEEDED = "build_succeeded"
    BUILD_FAILED = "build_failed"
    BUILD_CANCELED = "build_canceled"
    BUILD_TIMED_OUT = "build_timed_out"
    AGENT_CONNECTED = "agent_connected"
    AGENT_CONNECT_TIMED_OUT = "agent_connect_timed_out"
    STARTUP_SCRIPTS_RUNNING = "startup_scripts_running"
    STARTUP_SCRIPTS_FAILED = "startup_scripts_failed"
    STARTUP_SCRIPTS_TIMED_OUT = "startup_scripts_timed_out"
    WORKSPACE_DELETED = "workspace_deleted"
    START_REQUESTED = "start_requested"
    STOP_REQUESTED = "stop_requested"
    BUILD_STARTED = "build_started"
    BUILD_REJECTED = "build_rejected"
    AGENT_SILENT = "agent_silent"


# States in which a command may be in flight, a build is running or an agent
# is awaited: tool calls wait in these, and only in these.
IN_PROGRESS = frozenset({State.CREATING, State.BUILDING, State.AGENT_WAITING, State.STOPPING})
