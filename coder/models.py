"""
Read the parts of Coder's workspace JSON this project needs, as frozen values.

Field names are Coder's JSON names: codersdk/workspaces.go ``Workspace``,
codersdk/workspacebuilds.go ``WorkspaceBuild`` and ``WorkspaceResource``,
codersdk/provisionerdaemons.go ``ProvisionerJob``, codersdk/workspaceagents.go
``WorkspaceAgent``. Every other field is ignored. Go leaves ``omitempty``
pointers out (``started_at``...), so those default to None; a nil slice is
written as null, so lists accept null as empty. Enum values are Coder's full
lists; an unknown value makes parsing fail with ``CoderProtocolError``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BeforeValidator, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from coder.errors import CoderProtocolError


def _none_is_empty(value: Any) -> Any:
    return () if value is None else value


class Transition(StrEnum):
    """
    Say what a build does (codersdk ``WorkspaceTransition``).
    """

    START = "start"
    STOP = "stop"
    DELETE = "delete"


class BuildStatus(StrEnum):
    """
    Say where a build is (codersdk ``WorkspaceStatus``, derived from the job and transition).
    """

    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
    CANCELING = "canceling"
    CANCELED = "canceled"
    DELETING = "deleting"
    DELETED = "deleted"


class JobStatus(StrEnum):
    """
    Say where a provisioner job is (codersdk ``ProvisionerJobStatus``).
    """

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    CANCELING = "canceling"
    CANCELED = "canceled"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @property
    def active(self) -> bool:
        """
        Return whether the job may still change (codersdk ``ProvisionerJobStatus.Active``).
        """
        return self in {JobStatus.PENDING, JobStatus.RUNNING, JobStatus.CANCELING}


class AgentStatus(StrEnum):
    """
    Say whether an agent is reachable (codersdk ``WorkspaceAgentStatus``).
    """

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    TIMEOUT = "timeout"


class AgentLifecycle(StrEnum):
    """
    Say where an agent's startup or shutdown is (codersdk ``WorkspaceAgentLifecycle``).
    """

    CREATED = "created"
    STARTING = "starting"
    START_TIMEOUT = "start_timeout"
    START_ERROR = "start_error"
    READY = "ready"
    SHUTTING_DOWN = "shutting_down"
    SHUTDOWN_TIMEOUT = "shutdown_timeout"
    SHUTDOWN_ERROR = "shutdown_error"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class ProvisionerJob:
    """
    Hold a build's provisioner job: status, error and timestamps.
    """

    id: uuid.UUID
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error: str = ""
    error_code: str = ""


@dataclass(frozen=True, slots=True)
class WorkspaceAgent:
    """
    Hold one agent: reachability, lifecycle and when it connected.
    """

    id: uuid.UUID
    name: str
    status: AgentStatus
    lifecycle_state: AgentLifecycle
    first_connected_at: datetime | None = None
    last_connected_at: datetime | None = None
    disconnected_at: datetime | None = None
    ready_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class WorkspaceResource:
    """
    Hold one resource of a build and its agents.
    """

    id: uuid.UUID
    name: str
    type: str
    agents: Annotated[tuple[WorkspaceAgent, ...], BeforeValidator(_none_is_empty)] = ()


@dataclass(frozen=True, slots=True)
class WorkspaceBuild:
    """
    Hold a build: what it does, where it is, its job and its resources.
    """

    id: uuid.UUID
    workspace_id: uuid.UUID
    build_number: int
    transition: Transition
    status: BuildStatus
    job: ProvisionerJob
    created_at: datetime
    resources: Annotated[tuple[WorkspaceResource, ...], BeforeValidator(_none_is_empty)] = ()

    @property
    def agents(self) -> tuple[WorkspaceAgent, ...]:
        """
        Return every agent of every resource, in Coder's order.
        """
        return tuple(agent for resource in self.resources for agent in resource.agents)


@dataclass(frozen=True, slots=True)
class Workspace:
    """
    Hold a workspace as Coder reports it, with its latest build.
    """

    id: uuid.UUID
    name: str
    owner_id: uuid.UUID
    owner_name: str
    template_id: uuid.UUID
    latest_build: WorkspaceBuild
    organization_id: uuid.UUID | None = None
    template_name: str = ""
    created_at: datetime | None = None

    @property
    def deleted(self) -> bool:
        """
        Return whether a delete build completed; Coder's JSON has no ``deleted`` field.
        """
        return self.latest_build.status is BuildStatus.DELETED


_WORKSPACE = TypeAdapter(Workspace)
_BUILD = TypeAdapter(WorkspaceBuild)


def _protocol_error(what: str, exc: PydanticValidationError) -> CoderProtocolError:
    problems = "; ".join(
        f"{'.'.join(map(str, error['loc'])) or '(body)'}: {error['msg']}"
        for error in exc.errors()[:5]
    )
    return CoderProtocolError(f"unreadable {what} from Coder: {problems}")


def workspace(data: bytes | dict[str, Any]) -> Workspace:
    """
    Parse a ``codersdk.Workspace`` from JSON bytes or a decoded object.
    """
    try:
        if isinstance(data, bytes):
            return _WORKSPACE.validate_json(data)
        return _WORKSPACE.validate_python(data)
    except PydanticValidationError as exc:
        raise _protocol_error("workspace", exc) from exc


def workspace_build(data: bytes) -> WorkspaceBuild:
    """
    Parse a ``codersdk.WorkspaceBuild`` from JSON bytes.
    """
    try:
        return _BUILD.validate_json(data)
    except PydanticValidationError as exc:
        raise _protocol_error("workspace build", exc) from exc
