"""
Answer Coder's workspace routes: create, read by id or by owner and name, and new builds.

Status codes, messages and check order follow coderd/workspaces.go
(``postUserWorkspaces``, ``postWorkspacesByOrganization``, ``createWorkspace``,
``requestTemplate``, ``workspace``, ``workspaceByOwnerAndName``),
coderd/workspacebuilds.go (``postWorkspaceBuilds``) and
coderd/wsbuilder/wsbuilder.go (``checkRunningBuild``); the path parameters
follow coderd/httpmw (``ExtractWorkspaceParam``, ``ExtractUserParam``,
``ParseUUIDParam``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from aiohttp import web

from devtools.fake_coder import bodies, render, wire
from devtools.fake_coder.provisioner import Provisioner
from devtools.fake_coder.state import Build, Job, Template, User, Workspace, World, now, words

_MINUTE_MS = 60_000
_TTL_MAX_MS = 30 * 24 * 60 * _MINUTE_MS


def lookup_workspace(request: web.Request, world: World) -> Workspace | web.Response:
    """
    Return the workspace named by the ``{workspace}`` path parameter, or Coder's 400/404 answer.
    """
    raw = request.match_info["workspace"]
    workspace_id, error = wire.parse_uuid(raw)
    if workspace_id is None:
        return wire.respond(400, f'Invalid UUID "{raw}".', detail=error)
    workspace = world.workspaces.get(workspace_id)
    if workspace is None:
        return wire.respond(404, wire.RESOURCE_NOT_FOUND)
    return workspace


def _resolve_user(world: World, raw: str) -> User | web.Response:
    if raw == "me":
        return world.me
    user_id, _ = wire.parse_uuid(raw)
    if user_id is not None:
        return world.user_by_id(user_id)
    user = world.user_by_name(raw)
    if user is None:
        return wire.respond(400, wire.USER_NOT_FOUND, detail=f'queried user="{raw}"')
    return user


def _include_deleted(request: web.Request, field: str) -> bool | web.Response:
    raw = request.query.get("include_deleted", "")
    if not raw:
        return False
    parsed = wire.parse_go_bool(raw)
    if parsed is None:
        return wire.respond(
            400,
            f'Invalid boolean value "{raw}" for "include_deleted" query param.',
            validations=[(field, "Must be a valid boolean")],
        )
    return parsed


def _checked_ttl(ttl_ms: int | None) -> int | None:
    """
    Return the TTL Coder stores (truncated to minutes), as ``validWorkspaceTTLMillis`` checks it.
    """
    if not ttl_ms:
        return None  # the fake's templates have no default TTL
    truncated = int(ttl_ms / _MINUTE_MS) * _MINUTE_MS
    detail = ""
    if truncated < _MINUTE_MS:
        detail = "time until shutdown must be at least one minute"
    elif truncated > _TTL_MAX_MS:
        detail = "time until shutdown must be less than 30 days"
    if detail:
        raise wire.Refusal(
            wire.respond(
                400, "Invalid Workspace Time to Shutdown.", validations=[("ttl_ms", detail)]
            )
        )
    return truncated


class CoderApi:
    """
    Serve the ``/api/v2`` workspace routes over a ``World``.
    """

    def __init__(
        self, world: World, provisioner: Provisioner, on_create: Callable[[], None]
    ) -> None:
        self._world = world
        self._provisioner = provisioner
        self._on_create = on_create

    def routes(self) -> list[web.RouteDef]:
        """
        Return the routes, with Coder's path parameter names.
        """
        return [
            web.post("/api/v2/users/{user}/workspaces", self.post_user_workspaces),
            web.post(
                "/api/v2/organizations/{organization}/members/{user}/workspaces",
                self.post_workspaces_by_organization,
            ),
            web.get("/api/v2/users/{user}/workspace/{workspacename}", self.by_owner_and_name),
            web.get("/api/v2/workspaces/{workspace}", self.workspace),
            web.post("/api/v2/workspaces/{workspace}/builds", self.post_workspace_builds),
            web.get("/api/v2/buildinfo", self.buildinfo),
        ]

    async def buildinfo(self, request: web.Request) -> web.Response:
        """
        Answer codersdk ``BuildInfoResponse`` (coderd/coderd.go buildInfoHandler; no token needed).
        """
        base = f"{request.scheme}://{request.host}"
        return web.json_response(
            {
                "external_url": "https://github.com/coder/coder",
                "version": "v2.22.0-fake",
                "dashboard_url": base,
                "telemetry": False,
                "workspace_proxy": False,
                "agent_api_version": "2.0",
                "provisioner_api_version": "1.0",
                "upgrade_message": "",
                "deployment_id": "00000000-0000-0000-0000-000000000000",
            }
        )

    async def post_user_workspaces(self, request: web.Request) -> web.Response:
        """
        Create a workspace for ``{user}`` (id, username or ``me``); 201 with the Workspace.
        """
        owner = _resolve_user(self._world, request.match_info["user"])
        if isinstance(owner, web.Response):
            return owner
        return await self._create(request, owner)

    async def post_workspaces_by_organization(self, request: web.Request) -> web.Response:
        """
        Create a workspace through the deprecated organization route.
        """
        org = request.match_info["organization"]
        known = {str(self._world.organization_id), self._world.organization_name, "default"}
        if org not in known:
            return wire.respond(404, wire.RESOURCE_NOT_FOUND)
        return await self.post_user_workspaces(request)

    async def _create(self, request: web.Request, owner: User) -> web.Response:
        try:
            body = await bodies.create_workspace(request)
            if "reject" in words(body.name):
                raise bodies.rejected_name(body.name)
            template = self._template(body)
            ttl_ms = _checked_ttl(body.ttl_ms)
            self._check_create(owner, body)
        except wire.Refusal as refusal:
            return refusal.response
        moment = now()
        workspace = Workspace(uuid.uuid4(), body.name, owner, template, moment, moment, ttl_ms)
        version_id = body.template_version_id or template.active_version_id
        build = self._new_build(workspace, "start", version_id)
        self._world.workspaces[workspace.id] = workspace
        self._on_create()
        self._provisioner.start(workspace, build)
        self._world.touch(workspace)
        return wire.write(201, render.workspace_json(self._world, workspace))

    def _check_create(self, owner: User, body: bodies.CreateWorkspace) -> None:
        if body.automatic_updates not in {"", "always", "never"}:
            raise wire.Refusal(
                wire.respond(
                    400,
                    "Invalid Workspace Automatic Updates setting.",
                    validations=[
                        ("automatic_updates", "Automatic updates must be always or never")
                    ],
                )
            )
        if self._world.live_workspace(owner, body.name) is not None:
            raise wire.Refusal(
                wire.respond(
                    409,
                    f'Workspace "{body.name}" already exists.',
                    validations=[("name", "This value is already in use and should be unique.")],
                )
            )

    def _template(self, body: bodies.CreateWorkspace) -> Template:
        if body.template_id is not None:
            template = self._world.template(body.template_id)
            if template is None:
                raise wire.Refusal(
                    wire.respond(
                        400,
                        f'Template "{body.template_id}" doesn\'t exist.',
                        validations=[("template_id", "template not found")],
                    )
                )
        else:  # validation guarantees a template version id here
            version_id = body.template_version_id or uuid.UUID(int=0)
            template = self._world.template_by_version(version_id)
            if template is None:
                raise wire.Refusal(
                    wire.respond(
                        400,
                        f'Template version "{version_id}" doesn\'t exist.',
                        validations=[("template_version_id", "template not found")],
                    )
                )
        if template.forbidden:
            raise wire.Refusal(
                wire.respond(
                    403,
                    f'Unauthorized access to use the template "{template.name}".',
                    detail="Although you are able to view the template, you are unable to "
                    "create a workspace using it. Please contact an administrator about your "
                    "permissions if you feel this is an error.",
                )
            )
        return template

    def _new_build(self, workspace: Workspace, transition: str, version_id: uuid.UUID) -> Build:
        moment = now()
        build = Build(
            id=uuid.uuid4(),
            number=len(workspace.builds) + 1,
            transition=transition,
            job=Job(uuid.uuid4(), moment),
            template_version_id=version_id,
            initiator=self._world.me,
            created_at=moment,
            updated_at=moment,
        )
        workspace.builds.append(build)
        return build

    async def by_owner_and_name(self, request: web.Request) -> web.Response:
        """
        Return the owner's live workspace by name (case-insensitive), or a deleted one if asked.
        """
        owner = _resolve_user(self._world, request.match_info["user"])
        if isinstance(owner, web.Response):
            return owner
        include_deleted = _include_deleted(request, "include_deleted")
        if isinstance(include_deleted, web.Response):
            return include_deleted
        name = request.match_info["workspacename"]
        workspace = self._world.live_workspace(owner, name)
        if workspace is None and include_deleted:
            workspace = self._world.deleted_workspace(owner, name)
        if workspace is None:
            return wire.respond(404, wire.RESOURCE_NOT_FOUND)
        return wire.write(200, render.workspace_json(self._world, workspace))

    async def workspace(self, request: web.Request) -> web.Response:
        """
        Return a workspace by id; 410 when deleted unless ``include_deleted`` is true.
        """
        workspace = lookup_workspace(request, self._world)
        if isinstance(workspace, web.Response):
            return workspace
        include_deleted = _include_deleted(request, "deleted")
        if isinstance(include_deleted, web.Response):
            return include_deleted
        if workspace.deleted and not include_deleted:
            return _gone(workspace)
        return wire.write(200, render.workspace_json(self._world, workspace))

    async def post_workspace_builds(self, request: web.Request) -> web.Response:
        """
        Queue a start, stop or delete build; 409 while another build is active.
        """
        workspace = lookup_workspace(request, self._world)
        if isinstance(workspace, web.Response):
            return workspace
        try:
            body = await bodies.create_build(request)
            _check_build(workspace, body)
        except wire.Refusal as refusal:
            return refusal.response
        version_id = body.template_version_id or workspace.latest_build.template_version_id
        build = self._new_build(workspace, body.transition, version_id)
        self._provisioner.start(workspace, build)
        self._world.touch(workspace)
        return wire.write(201, render.build_json(self._world, workspace, build))


def _check_build(workspace: Workspace, body: bodies.CreateBuild) -> None:
    """
    Refuse a build as postWorkspaceBuilds and wsbuilder would, in their order.
    """
    if workspace.deleted:
        raise wire.Refusal(_gone(workspace))
    if body.orphan and body.transition != "delete":
        raise wire.Refusal(wire.respond(400, "Orphan is only permitted when deleting a workspace."))
    if body.template_version_id not in {None, workspace.template.active_version_id}:
        raise wire.Refusal(
            wire.respond(
                400,
                "template version doesn't match template",
                detail=f"template version {body.template_version_id} is not a version of "
                f"template {workspace.template.id}",
            )
        )
    if workspace.latest_build.job.status in {"pending", "running", "canceling"}:
        raise wire.Refusal(wire.respond(409, wire.BUILD_ACTIVE, detail=wire.BUILD_ACTIVE))


def _gone(workspace: Workspace) -> web.Response:
    # coderd/workspaces.go workspace(): the text says '?deleted=true' although the
    # query parameter is include_deleted; that is Coder's own wording.
    return wire.respond(
        410,
        f'Workspace "{workspace.id}" was deleted, you can view this workspace by '
        "specifying '?deleted=true' and trying again.",
    )
