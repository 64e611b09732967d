"""
Hold the fake's world in memory: users, templates, workspaces, their builds, jobs and agents.

These are mutable entities (the fake changes them as builds progress), not
values; ``render`` turns them into Coder's JSON. Changes go through
``World.touch``, which tells the watchers and wakes ``wait_until``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

_NS = uuid.UUID("6f1e2c3a-9d4b-4e7a-8c5d-0a1b2c3d4e5f")

# Words that force an outcome when they appear, hyphen-separated, in a
# workspace name (like workspaced's simulator): see the package docstring.
FORCED_WORDS = ("reject", "fail", "noagent", "lost", "startfail", "slowstart", "stuck")


def now() -> datetime:
    """
    Return the current UTC time at Coder's precision (PostgreSQL keeps microseconds).
    """
    return datetime.now(UTC)


def derive(*parts: object) -> uuid.UUID:
    """
    Return a stable UUID for ``parts``, so the same inputs give the same ids across runs.
    """
    return uuid.uuid5(_NS, "/".join(map(str, parts)))


def words(name: str) -> frozenset[str]:
    """
    Return the hyphen-separated words of ``name``, lower-cased.
    """
    return frozenset(name.lower().split("-"))


@dataclass(frozen=True, slots=True)
class User:
    """
    Say who owns workspaces: Coder's user id and username.
    """

    id: uuid.UUID
    username: str


@dataclass(frozen=True, slots=True)
class Template:
    """
    Describe a template the fake knows, with its active version.
    """

    id: uuid.UUID
    name: str
    active_version_id: uuid.UUID
    forbidden: bool = False


@dataclass(slots=True)
class Agent:
    """
    Track one workspace agent (codersdk/workspaceagents.go WorkspaceAgent).
    """

    id: uuid.UUID
    resource_id: uuid.UUID
    name: str
    created_at: datetime
    connection_timeout_s: int
    status: str = "connecting"
    lifecycle_state: str = "created"
    first_connected_at: datetime | None = None
    last_connected_at: datetime | None = None
    disconnected_at: datetime | None = None
    started_at: datetime | None = None
    ready_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(slots=True)
class Resource:
    """
    Track one resource of a build (codersdk/workspacebuilds.go WorkspaceResource).
    """

    id: uuid.UUID
    job_id: uuid.UUID
    created_at: datetime
    transition: str
    type: str
    name: str
    agents: list[Agent] = field(default_factory=list)


@dataclass(slots=True)
class Job:
    """
    Track a provisioner job (codersdk/provisionerdaemons.go ProvisionerJob).
    """

    id: uuid.UUID
    created_at: datetime
    status: str = "pending"
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error: str = ""
    worker_id: uuid.UUID | None = None


@dataclass(slots=True)
class Build:
    """
    Track a workspace build (codersdk/workspacebuilds.go WorkspaceBuild).
    """

    id: uuid.UUID
    number: int
    transition: str
    job: Job
    template_version_id: uuid.UUID
    initiator: User
    created_at: datetime
    updated_at: datetime
    resources: list[Resource] = field(default_factory=list)

    @property
    def agents(self) -> list[Agent]:
        """
        Return every agent of every resource of this build.
        """
        return [agent for resource in self.resources for agent in resource.agents]


@dataclass(slots=True)
class Workspace:
    """
    Track a workspace (codersdk/workspaces.go Workspace) and its builds, latest last.
    """

    id: uuid.UUID
    name: str
    owner: User
    template: Template
    created_at: datetime
    updated_at: datetime
    ttl_ms: int | None
    builds: list[Build] = field(default_factory=list)
    deleted: bool = False

    @property
    def latest_build(self) -> Build:
        """
        Return the newest build; a workspace always has at least one.
        """
        return self.builds[-1]


class World:
    """
    Keep every user, template and workspace, and tell listeners when a workspace changes.
    """

    def __init__(self, me: User, organization_id: uuid.UUID, organization_name: str) -> None:
        self.me = me
        self.organization_id = organization_id
        self.organization_name = organization_name
        self.users: dict[uuid.UUID, User] = {me.id: me}
        self.templates: dict[uuid.UUID, Template] = {}
        self.unknown_templates: set[uuid.UUID] = set()
        self.accept_any_template = True
        self.workspaces: dict[uuid.UUID, Workspace] = {}
        self.listeners: list[Callable[[Workspace], None]] = []
        self._waiters: list[asyncio.Future[None]] = []

    def add_user(self, user_id: uuid.UUID, username: str) -> User:
        """
        Register ``username`` for ``user_id``, replacing a derived name.
        """
        user = User(user_id, username)
        self.users[user_id] = user
        return user

    def user_by_id(self, user_id: uuid.UUID) -> User:
        """
        Return the user with ``user_id``; an unknown id becomes ``user-<first 8 hex>``.
        """
        user = self.users.get(user_id)
        if user is None:
            user = self.add_user(user_id, f"user-{user_id.hex[:8]}")
        return user

    def user_by_name(self, username: str) -> User | None:
        """
        Return the user called ``username`` (case-insensitive, as Coder's LOWER() query), or None.
        """
        wanted = username.lower()
        return next((u for u in self.users.values() if u.username.lower() == wanted), None)

    def add_template(
        self, template_id: uuid.UUID, name: str, *, forbidden: bool = False
    ) -> Template:
        """
        Register a template under ``name``; ``forbidden`` ones answer 403 on create.
        """
        template = Template(template_id, name, derive("version", template_id), forbidden)
        self.templates[template_id] = template
        self.unknown_templates.discard(template_id)
        return template

    def template(self, template_id: uuid.UUID) -> Template | None:
        """
        Return the template, inventing it when any UUID is accepted and this one is not refused.
        """
        if template_id in self.unknown_templates:
            return None
        found = self.templates.get(template_id)
        if found is None and self.accept_any_template:
            found = self.add_template(template_id, f"template-{template_id.hex[:8]}")
        return found

    def template_by_version(self, version_id: uuid.UUID) -> Template | None:
        """
        Return the template whose active version is ``version_id``, inventing one if allowed.
        """
        found = next(
            (t for t in self.templates.values() if t.active_version_id == version_id), None
        )
        if found is None and self.accept_any_template:
            template_id = derive("template-of-version", version_id)
            if template_id in self.unknown_templates:
                return None
            found = Template(template_id, f"template-{template_id.hex[:8]}", version_id)
            self.templates[template_id] = found
        return found

    def live_workspace(self, owner: User, name: str) -> Workspace | None:
        """
        Return the owner's workspace called ``name`` that is not deleted (case-insensitive).
        """
        wanted = name.lower()
        return next(
            (
                w
                for w in self.workspaces.values()
                if w.owner.id == owner.id and w.name.lower() == wanted and not w.deleted
            ),
            None,
        )

    def deleted_workspace(self, owner: User, name: str) -> Workspace | None:
        """
        Return the owner's most recently created deleted workspace called ``name``, or None.
        """
        wanted = name.lower()
        found = [
            w
            for w in self.workspaces.values()
            if w.owner.id == owner.id and w.name.lower() == wanted and w.deleted
        ]
        return max(found, key=lambda w: w.created_at) if found else None

    def touch(self, workspace: Workspace) -> None:
        """
        Record that ``workspace`` changed: tell the listeners and wake every waiter.
        """
        workspace.latest_build.updated_at = now()
        for listener in list(self.listeners):
            listener(workspace)
        self.notify()

    def notify(self) -> None:
        """
        Wake every ``wait_until`` so it re-checks its condition.
        """
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        """
        Return once ``predicate()`` holds, re-checking after every change.

        Raise ``TimeoutError`` when it still does not hold after ``timeout_s``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("condition not met in time")
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                if not predicate():
                    raise
