"""
Watch every workspace bound to a chat and publish what changes: job updates and heartbeats.

One task per watched workspace follows Coder's watch stream (WebSocket, SSE
as fallback: ``coder.client``). On every (re)connect it first reads the
workspace once, so a change made while no one watched is published; R12
makes the repeats harmless. A dropped stream reconnects with backoff.

Coder's watch speaks when the agent connects or disconnects, not on every
agent heartbeat, so while the bound agent stays ``connected`` one ticker
repeats its heartbeat every ``heartbeat_interval_s`` (below the daemon's
inactivity timeout): a reachable agent is never judged gone (R6 would create
a second workspace), and one that disconnects stops beating at once, so it is
judged gone within the inactivity timeout. The cost is one small record per
ready chat per interval.

Which instance watches what: leases in PostgreSQL (``storage.watches``),
renewed every third of the lease; a dead instance's leases run out and the
others take its watches over.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime

from coder import errors as coder_errors
from coder import models
from storage import errors as storage_errors
from storage.watches import PostgresWatchLeases
from telemetry import logs
from workspaced.bridge import mapping
from workspaced.bridge.commands import Backoff, CoderApi
from workspaced.bridge.publisher import EventPublisher

log = logs.get(__name__)


@dataclass(frozen=True, slots=True)
class WatchOptions:
    """
    Say how often the bridge beats, renews its leases and looks for new bindings.
    """

    heartbeat_interval_s: float = 10.0
    lease_s: float = 15.0
    unbound_grace_s: float = 300.0
    max_watches: int = 20_000


@dataclass(slots=True)
class _Watched:
    workspace_id: str
    task: asyncio.Task[None] | None = None
    last_job: tuple[str, str, tuple[str, ...]] | None = None
    agent: models.WorkspaceAgent | None = None  # the bound agent while it is connected
    lifecycle: str | None = None


@dataclass(slots=True)
class WatchStats:
    """
    Count what the watches did, for logs and tests.
    """

    job_updates: int = 0
    heartbeats: int = 0
    reconnects: int = 0
    deleted: int = 0
    by_workspace: dict[str, int] = field(default_factory=dict)


class WatchManager:
    """
    Hold this instance's watches: start, follow and stop one task per leased workspace.
    """

    def __init__(  # noqa: PLR0913 - the watcher's collaborators
        self,
        coder: CoderApi,
        publisher: EventPublisher,
        leases: PostgresWatchLeases,
        options: WatchOptions,
        *,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._coder = coder
        self._publisher = publisher
        self._leases = leases
        self._options = options
        self._backoff = backoff or Backoff(first_s=0.5)
        self._rng = rng or random.Random()
        self._watched: dict[str, _Watched] = {}
        self._wake = asyncio.Event()
        self.stats = WatchStats()

    @property
    def watching(self) -> frozenset[str]:
        """
        Return the workspaces this instance watches now.
        """
        return frozenset(self._watched)

    async def watch_now(self, workspace_id: str) -> None:
        """
        Lease and watch a workspace this instance just created, without waiting for a sweep.
        """
        if await self._leases.add(workspace_id):
            self._start(workspace_id)

    async def run(self, stop: asyncio.Event) -> None:
        """
        Keep the leases and the watches in step until ``stop``; then give the leases back.
        """
        beating = asyncio.create_task(self._beat(stop), name="bridge-heartbeats")
        try:
            while not stop.is_set():
                try:
                    await self._leases.sync(self._options.unbound_grace_s)
                    held = await self._leases.claim(self._options.max_watches)
                except storage_errors.StorageError as exc:
                    log.warning("bridge_leases_unavailable", error=str(exc))
                else:
                    self._follow(held)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_first(stop, self._wake), self._options.lease_s / 3)
        finally:
            beating.cancel()
            tasks = [w.task for w in self._watched.values() if w.task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(beating, *tasks, return_exceptions=True)
            self._watched.clear()
            with contextlib.suppress(storage_errors.StorageError):
                await self._leases.release()

    def _follow(self, held: set[str]) -> None:
        for workspace_id in held - self._watched.keys():
            self._start(workspace_id)
        for workspace_id in self._watched.keys() - held:
            watched = self._watched.pop(workspace_id)
            if watched.task is not None:
                watched.task.cancel()

    def _start(self, workspace_id: str) -> None:
        if workspace_id in self._watched:
            return
        watched = _Watched(workspace_id)
        watched.task = asyncio.create_task(self._follow_one(watched), name=f"watch-{workspace_id}")
        self._watched[workspace_id] = watched

    async def _follow_one(self, watched: _Watched) -> None:
        attempt = 0
        while True:
            try:
                streamed = await self._watch_once(watched)
            except coder_errors.WorkspaceGoneError:
                await self._gone(watched)
                return
            except (coder_errors.CoderUnavailableError, coder_errors.CoderProtocolError) as exc:
                watched.agent = None  # unknown until we see it again: stop vouching for it
                delay_s = self._backoff.delay(
                    attempt, getattr(exc, "retry_after_s", None), self._rng
                )
                attempt += 1
                self.stats.reconnects += 1
                log.warning(
                    "bridge_watch_retrying",
                    workspace_id=watched.workspace_id,
                    error=str(exc),
                    retry_in_s=round(delay_s, 3),
                )
                await asyncio.sleep(delay_s)
            except coder_errors.CoderRejectedError as exc:
                log.warning(
                    "bridge_watch_refused", workspace_id=watched.workspace_id, error=str(exc)
                )
                await asyncio.sleep(self._options.lease_s)
            else:
                if streamed is None:
                    return  # gone for good
                # The stream ended (Coder restarted, a proxy cut it): read again and
                # follow anew, backing off only while streams end before saying anything.
                attempt = 0 if streamed else attempt + 1
                await asyncio.sleep(self._backoff.delay(attempt, None, self._rng))

    async def _watch_once(self, watched: _Watched) -> int | None:
        """
        Read the workspace, then follow its stream until it ends.

        Return how many snapshots the stream gave, or None once the workspace is gone for good.
        """
        snapshot = await self._coder.workspace(watched.workspace_id, include_deleted=True)
        if await self._seen(watched, snapshot):
            return None
        streamed = 0
        async for snapshot in self._coder.watch(watched.workspace_id):
            streamed += 1
            if await self._seen(watched, snapshot):
                return None
        self.stats.reconnects += 1
        log.info("bridge_watch_reconnecting", workspace_id=watched.workspace_id)
        return streamed

    async def _seen(self, watched: _Watched, workspace: models.Workspace) -> bool:
        """
        Publish what changed in this snapshot; return True when the workspace is gone for good.
        """
        view = mapping.job_update(workspace)
        if view.key != watched.last_job:
            await self._publisher.send(
                "provisioner_job_updates",
                watched.workspace_id,
                mapping.JOB_UPDATED,
                view.ce_id,
                view.data,
            )
            watched.last_job = view.key
            self.stats.job_updates += 1
        agent = mapping.bound_agent(workspace)
        connected = (
            agent if agent is not None and agent.status is models.AgentStatus.CONNECTED else None
        )
        newly = connected is not None and (
            watched.agent is None
            or watched.agent.id != connected.id
            or watched.lifecycle != connected.lifecycle_state.value
        )
        watched.agent = connected
        watched.lifecycle = connected.lifecycle_state.value if connected else None
        if newly and connected is not None:
            await self._beat_one(watched, connected)
        if workspace.deleted:
            await self._gone(watched)
            return True
        return False

    async def _gone(self, watched: _Watched) -> None:
        self.stats.deleted += 1
        self._watched.pop(watched.workspace_id, None)
        with contextlib.suppress(storage_errors.StorageError):
            await self._leases.forget([watched.workspace_id])
        log.info("bridge_watch_ended", workspace_id=watched.workspace_id, reason="deleted")

    async def _beat_one(self, watched: _Watched, agent: models.WorkspaceAgent) -> None:
        data = mapping.heartbeat(watched.workspace_id, agent, datetime.now(UTC))
        await self._publisher.send(
            "agent_heartbeats",
            str(agent.id),
            mapping.HEARTBEAT,
            mapping.event_id("beat", data["agent_id"], data["occurred_at"]),
            data,
        )
        self.stats.heartbeats += 1

    async def _beat(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self._options.heartbeat_interval_s)
            now = datetime.now(UTC)
            beats = [
                (
                    str(w.agent.id),
                    mapping.HEARTBEAT,
                    mapping.event_id("beat", w.agent.id, now),
                    mapping.heartbeat(w.workspace_id, w.agent, now),
                )
                for w in list(self._watched.values())
                if w.agent is not None
            ]
            try:
                await self._publisher.send_many("agent_heartbeats", beats)
            except Exception as exc:  # noqa: BLE001 - the next tick tries again
                log.warning("bridge_heartbeats_failed", error=str(exc), agents=len(beats))
            else:
                self.stats.heartbeats += len(beats)


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
