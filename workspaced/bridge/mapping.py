"""
Translate Coder's workspace JSON into our events, field by field (docs/coder.md).

Pure functions of a ``coder.models.Workspace`` snapshot: no I/O, no clock
unless given. Event ids are derived from what they describe, so the same
fact seen twice (a re-read after a reconnect, two bridges during a lease
handover) is one event for the daemon's inbox.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from coder import models

JOB_UPDATED = "coder.provisioner_job.updated.v1"
HEARTBEAT = "coder.agent.heartbeat.v1"
CREATED = "coder.workspace.created.v1"
CREATE_FAILED = "coder.workspace.create_failed.v1"
BUILD_QUEUED = "coder.workspace.build_queued.v1"
BUILD_REJECTED = "coder.workspace.build_rejected.v1"
_NS = uuid.UUID("3b0f5a52-6f0e-4a57-9d55-8f1c9a7e2d10")


def event_id(*parts: object) -> str:
    """
    Return a stable CloudEvent id for ``parts``.
    """
    return str(uuid.uuid5(_NS, "/".join(map(str, parts))))


@dataclass(frozen=True, slots=True)
class JobView:
    """
    Hold what the daemon learns from a snapshot's latest build: one job update.
    """

    key: tuple[str, str, tuple[str, ...]]
    ce_id: str
    data: dict[str, Any]


def job_update(workspace: models.Workspace) -> JobView:
    """
    Return the ``coder.provisioner_job.updated.v1`` the snapshot's latest build stands for.

    ``occurred_at`` is the job's own latest timestamp (completed, else
    started, else created), so a re-read never looks newer than it is.
    """
    build = workspace.latest_build
    job = build.job
    agents = [{"id": str(a.id), "name": a.name} for a in build.agents]
    data: dict[str, Any] = {
        "job_id": str(job.id),
        "workspace_id": str(workspace.id),
        "build_id": str(build.id),
        "transition": build.transition.value,
        "status": job.status.value,
        "agents": agents,
        "occurred_at": _rfc3339(job.completed_at or job.started_at or job.created_at),
    }
    if job.error:
        data["error"] = job.error
    key = (str(job.id), job.status.value, tuple(a["id"] for a in agents))
    return JobView(key, event_id("job", *key[:2], *key[2]), data)


def bound_agent(workspace: models.Workspace) -> models.WorkspaceAgent | None:
    """
    Return the agent the daemon binds: the first of a succeeded start build (R9).
    """
    build = workspace.latest_build
    if build.transition is not models.Transition.START or not build.agents:
        return None
    return build.agents[0]


def heartbeat(
    workspace_id: str, agent_id: str, lifecycle_state: str, at: datetime
) -> dict[str, Any]:
    """
    Return the ``coder.agent.heartbeat.v1`` of a connected agent seen at ``at``.
    """
    return {
        "agent_id": agent_id,
        "workspace_id": workspace_id,
        "lifecycle_state": lifecycle_state,
        "occurred_at": _rfc3339(at),
    }


def created(command: dict[str, Any], workspace: models.Workspace) -> dict[str, Any]:
    """
    Return the ``coder.workspace.created.v1`` answering ``command``.
    """
    build = workspace.latest_build
    return {
        "command_id": command["command_id"],
        "chat_id": command["chat_id"],
        "workspace_id": str(workspace.id),
        "workspace_name": workspace.name,
        "owner_name": workspace.owner_name,
        "build_id": str(build.id),
        "job_id": str(build.job.id),
    }


def build_queued(command: dict[str, Any], build: models.WorkspaceBuild) -> dict[str, Any]:
    """
    Return the ``coder.workspace.build_queued.v1`` answering a start or stop command.
    """
    return {
        "command_id": command["command_id"],
        "chat_id": command["chat_id"],
        "workspace_id": command["workspace_id"],
        "transition": build.transition.value,
        "build_id": str(build.id),
        "job_id": str(build.job.id),
    }


def rejected(
    command: dict[str, Any],
    status_code: int | None,
    message: str,
    detail: str,
    validations: list[dict[str, str]],
) -> dict[str, Any]:
    """
    Return a refusal (``create_failed``, ``build_rejected``) carrying Coder's response as it came.
    """
    data: dict[str, Any] = {
        "command_id": command["command_id"],
        "chat_id": command["chat_id"],
        "message": message,
    }
    if status_code is not None:
        data["status_code"] = status_code
    if detail:
        data["detail"] = detail
    if validations:
        data["validations"] = validations
    return data


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
