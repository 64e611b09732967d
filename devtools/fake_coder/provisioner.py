"""
Play builds out as Coder's provisioner and agents would, with configurable delays.

A job goes pending, running, then succeeded or failed (one ``job_step_s``
each). A successful ``start`` build gets one resource with one agent
(``connecting``/``created``); the agent connects after
``agent_connect_delay_s`` (``connected``/``starting``) and is ``ready``
after ``agent_ready_delay_s``. An agent that never connects turns
``timeout`` after its ``connection_timeout_seconds``. A ``stop`` build leaves
no agents; a successful ``delete`` marks the workspace deleted. Words in the
workspace name change this (see the package docstring).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from devtools.fake_coder.state import Agent, Build, Resource, Workspace, World, derive, now, words

JOB_ERROR = "terraform apply: exit status 1"


@dataclass(frozen=True, slots=True)
class Timing:
    """
    Say how long each step takes, in seconds.
    """

    job_step_s: float = 0.05
    agent_connect_delay_s: float = 0.05
    agent_ready_delay_s: float = 0.05
    agent_connection_timeout_s: int = 120


class Provisioner:
    """
    Run one task per build; ``close`` cancels them all.
    """

    def __init__(self, world: World, timing: Timing) -> None:
        self._world = world
        self.timing = timing
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, workspace: Workspace, build: Build) -> None:
        """
        Begin playing ``build`` out in the background.
        """
        task = asyncio.get_running_loop().create_task(self._play(workspace, build))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """
        Cancel every build still being played and wait for them to stop.
        """
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _play(self, workspace: Workspace, build: Build) -> None:
        forced = words(workspace.name)
        if "stuck" in forced:
            return  # no provisioner picks the job up: it stays pending
        job, step = build.job, self.timing.job_step_s
        await asyncio.sleep(step)
        job.status, job.started_at, job.worker_id = "running", now(), derive("worker")
        self._world.touch(workspace)
        await asyncio.sleep(step)
        job.completed_at = now()
        if build.transition == "start" and "fail" in forced:
            job.status, job.error = "failed", JOB_ERROR
            self._world.touch(workspace)
            return
        job.status = "succeeded"
        agent = None
        if build.transition == "start":
            agent = self._add_resources(build, with_agent="noagent" not in forced)
        if build.transition == "delete":
            workspace.deleted = True
        self._world.touch(workspace)
        if agent is not None:
            await self._play_agent(workspace, agent, forced)

    def _add_resources(self, build: Build, *, with_agent: bool) -> Agent | None:
        resource = Resource(
            id=derive("resource", build.id),
            job_id=build.job.id,
            created_at=now(),
            transition=build.transition,
            type="docker_container",
            name="main",
        )
        build.resources.append(resource)
        if not with_agent:
            return None
        agent = Agent(
            id=derive("agent", build.id),
            resource_id=resource.id,
            name="main",
            created_at=now(),
            connection_timeout_s=self.timing.agent_connection_timeout_s,
        )
        resource.agents.append(agent)
        return agent

    async def _play_agent(self, workspace: Workspace, agent: Agent, forced: frozenset[str]) -> None:
        if "lost" in forced:
            await asyncio.sleep(agent.connection_timeout_s)
            if agent.status == "connecting":
                agent.status, agent.updated_at = "timeout", now()
                self._world.touch(workspace)
            return
        await asyncio.sleep(self.timing.agent_connect_delay_s)
        moment = now()
        agent.status, agent.lifecycle_state = "connected", "starting"
        agent.first_connected_at = agent.last_connected_at = agent.started_at = moment
        agent.updated_at = moment
        self._world.touch(workspace)
        if "slowstart" in forced:
            return
        await asyncio.sleep(self.timing.agent_ready_delay_s)
        agent.lifecycle_state = "start_error" if "startfail" in forced else "ready"
        agent.ready_at = agent.updated_at = now()
        self._world.touch(workspace)
