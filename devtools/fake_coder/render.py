"""
Render the fake's entities as Coder's JSON, field for field and in Go declaration order.

Shapes: codersdk/workspaces.go ``Workspace``, codersdk/workspacebuilds.go
``WorkspaceBuild`` and ``WorkspaceResource``, codersdk/provisionerdaemons.go
``ProvisionerJob``, codersdk/workspaceagents.go ``WorkspaceAgent``, checked
against docs/reference/api/workspaces.md. Go's ``omitempty`` pointers are left
out when nil (``started_at``, ``completed_at``, ``first_connected_at``...),
not written as null; ``NullTime`` and ``NullUUID`` fields are written as null.
"""

from __future__ import annotations

from typing import Any

from devtools.fake_coder import wire
from devtools.fake_coder.state import Agent, Build, Job, Resource, Workspace, World, derive

_SHUTTING_DOWN = frozenset({"shutting_down", "shutdown_timeout", "shutdown_error", "off"})


def build_status(job_status: str, transition: str) -> str:
    """
    Derive a build's status from its job, as codersdk ``ConvertWorkspaceStatus`` does.
    """
    if job_status == "running":
        return {"start": "starting", "stop": "stopping", "delete": "deleting"}[transition]
    if job_status == "succeeded":
        return {"start": "running", "stop": "stopped", "delete": "deleted"}[transition]
    return {
        "pending": "pending",
        "canceling": "canceling",
        "canceled": "canceled",
        "failed": "failed",
    }.get(job_status, "failed")


def agent_health(agent: Agent) -> dict[str, Any]:
    """
    Return an agent's health with the reasons of coderd/database/db2sdk ``WorkspaceAgent``.
    """
    reason = ""
    if agent.status != "connected" and agent.lifecycle_state == "off":
        reason = "agent is not running"
    elif agent.status == "connecting":
        reason = "agent has not yet connected"
    elif agent.status == "timeout":
        reason = "agent is taking too long to connect"
    elif agent.status == "disconnected":
        reason = "agent has lost connection"
    elif agent.lifecycle_state == "start_error":
        reason = "agent startup script exited with an error"
    elif agent.lifecycle_state in _SHUTTING_DOWN:
        reason = "agent is shutting down"
    health: dict[str, Any] = {"healthy": not reason}
    if reason:
        health["reason"] = reason
    return health


def _optional_times(target: dict[str, Any], **moments: Any) -> None:
    for key, moment in moments.items():
        if moment is not None:
            target[key] = wire.rfc3339(moment)


def agent_json(agent: Agent) -> dict[str, Any]:
    """
    Render codersdk ``WorkspaceAgent``.
    """
    body: dict[str, Any] = {
        "id": str(agent.id),
        "created_at": wire.rfc3339(agent.created_at),
        "updated_at": wire.rfc3339(agent.updated_at or agent.created_at),
    }
    _optional_times(
        body,
        first_connected_at=agent.first_connected_at,
        last_connected_at=agent.last_connected_at,
        disconnected_at=agent.disconnected_at,
        started_at=agent.started_at,
        ready_at=agent.ready_at,
    )
    body |= {
        "status": agent.status,
        "lifecycle_state": agent.lifecycle_state,
        "name": agent.name,
        "resource_id": str(agent.resource_id),
        "architecture": "amd64",
        "environment_variables": {},
        "operating_system": "linux",
        "logs_length": 0,
        "logs_overflowed": False,
        "directory": "/home/coder",
        "expanded_directory": "/home/coder",
        "version": "v2.0.0" if agent.first_connected_at else "",
        "api_version": "2.0" if agent.first_connected_at else "",
        "apps": [],
        "connection_timeout_seconds": agent.connection_timeout_s,
        "troubleshooting_url": "",
        "subsystems": [],
        "health": agent_health(agent),
        "display_apps": ["vscode", "web_terminal", "ssh_helper", "port_forwarding_helper"],
        "log_sources": [],
        "scripts": [],
        "startup_script_behavior": "non-blocking",
        "parent_id": None,
    }
    return body


def resource_json(resource: Resource) -> dict[str, Any]:
    """
    Render codersdk ``WorkspaceResource``; ``agents`` is omitempty.
    """
    body: dict[str, Any] = {
        "id": str(resource.id),
        "created_at": wire.rfc3339(resource.created_at),
        "job_id": str(resource.job_id),
        "workspace_transition": resource.transition,
        "type": resource.type,
        "name": resource.name,
        "hide": False,
        "icon": "",
    }
    if resource.agents:
        body["agents"] = [agent_json(agent) for agent in resource.agents]
    body["daily_cost"] = 0
    return body


def job_json(job: Job, world: World, workspace: Workspace, build: Build) -> dict[str, Any]:
    """
    Render codersdk ``ProvisionerJob`` for a workspace build.
    """
    body: dict[str, Any] = {
        "id": str(job.id),
        "created_at": wire.rfc3339(job.created_at),
    }
    _optional_times(body, started_at=job.started_at, completed_at=job.completed_at)
    if job.error:
        body["error"] = job.error
    body["status"] = job.status
    if job.worker_id is not None:
        body["worker_id"] = str(job.worker_id)
    template = workspace.template
    body |= {
        "file_id": str(derive("file", template.active_version_id)),
        "tags": {"owner": "", "scope": "organization"},
        "queue_position": 0,
        "queue_size": 0,
        "organization_id": str(world.organization_id),
        "initiator_id": str(build.initiator.id),
        "input": {"workspace_build_id": str(build.id)},
        "type": "workspace_build",
        "available_workers": [],
        "metadata": {
            "template_version_name": "v1",
            "template_id": str(template.id),
            "template_name": template.name,
            "template_display_name": "",
            "template_icon": "",
            "workspace_id": str(workspace.id),
            "workspace_name": workspace.name,
        },
        "logs_overflowed": False,
    }
    return body


def build_json(world: World, workspace: Workspace, build: Build) -> dict[str, Any]:
    """
    Render codersdk ``WorkspaceBuild``.
    """
    owner = workspace.owner
    return {
        "id": str(build.id),
        "created_at": wire.rfc3339(build.created_at),
        "updated_at": wire.rfc3339(build.updated_at),
        "workspace_id": str(workspace.id),
        "workspace_name": workspace.name,
        "workspace_owner_id": str(owner.id),
        "workspace_owner_name": owner.username,
        "workspace_owner_avatar_url": "",
        "template_version_id": str(build.template_version_id),
        "template_version_name": "v1",
        "build_number": build.number,
        "transition": build.transition,
        "initiator_id": str(build.initiator.id),
        "initiator_name": build.initiator.username,
        "job": job_json(build.job, world, workspace, build),
        "reason": "initiator",
        "resources": [resource_json(resource) for resource in build.resources],
        "deadline": None,
        "max_deadline": None,
        "status": build_status(build.job.status, build.transition),
        "daily_cost": 0,
        "matched_provisioners": {
            "count": 1,
            "available": 1,
            "most_recently_seen": wire.rfc3339(build.created_at),
        },
        "template_version_preset_id": None,
        "has_ai_task": False,
        "has_external_agent": False,
    }


def workspace_json(world: World, workspace: Workspace) -> dict[str, Any]:
    """
    Render codersdk ``Workspace`` as coderd's ``convertWorkspace`` fills it.
    """
    build = workspace.latest_build
    failing = [str(a.id) for a in build.agents if not agent_health(a)["healthy"]]
    template = workspace.template
    body: dict[str, Any] = {
        "id": str(workspace.id),
        "created_at": wire.rfc3339(workspace.created_at),
        "updated_at": wire.rfc3339(workspace.updated_at),
        "owner_id": str(workspace.owner.id),
        "owner_name": workspace.owner.username,
        "owner_avatar_url": "",
        "organization_id": str(world.organization_id),
        "organization_name": world.organization_name,
        "template_id": str(template.id),
        "template_name": template.name,
        "template_display_name": "",
        "template_icon": "",
        "template_allow_user_cancel_workspace_jobs": False,
        "template_active_version_id": str(template.active_version_id),
        "template_require_active_version": False,
        "template_use_classic_parameter_flow": False,
        "latest_build": build_json(world, workspace, build),
        "latest_app_status": None,
        "outdated": build.template_version_id != template.active_version_id,
        "name": workspace.name,
    }
    if workspace.ttl_ms is not None:
        body["ttl_ms"] = workspace.ttl_ms
    body |= {
        "last_used_at": wire.rfc3339(workspace.created_at),
        "deleting_at": None,
        "dormant_at": None,
        "health": {"healthy": not failing, "failing_agents": failing},
        "automatic_updates": "never",
        "allow_renames": False,
        "favorite": False,
        "next_start_at": None,
        "is_prebuild": False,
        "task_id": None,
    }
    return body
