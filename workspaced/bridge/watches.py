"""
Watch every workspace bound to a chat and publish what changes: job updates and heartbeats.

One task per watched workspace follows Coder's watch stream (WebSocket, SSE
as fallback: ``coder.client``). On every (re)connect it first reads the
workspace once, so a change made while no one watched is published; R12
makes the repeats harmless. A dropped stream reconnects with backoff. At most
``max_opening`` watches read and connect at once. An instance holds
thousands of watches that are quiet for hours, so a watch keeps only what
decides the next publish (the last job update's id, the connected agent and
its lifecycle), never a snapshot, and has no timer of its own (about 5 KB
each, docs/benchmarks.md).

Coder's watch speaks when the agent connects or disconnects, not on every
agent heartbeat, so while the bound agent stays ``connected`` one ticker
repeats its heartbeat every ``heartbeat_interval_s`` (below the daemon's
inactivity timeout), a tenth of the agents every tenth of the interval: a
reachable agent is never judged gone (R6 would create a second workspace),
and one that disconnects stops beating at once, so it is judged gone within
the inactivity timeout. The cost is one small record per ready chat per
interval (docs/coder.md).

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
from typing import Any

from coder import errors as coder_errors
from coder import models
from consumers import kafka
from storage import errors as storage_errors
from storage.watches import PostgresWatchLeases
from telemetry import logs, metrics
from workspaced.bridge import mapping
from workspaced.bridge.commands import Backoff, CoderApi
from workspaced.bridge.publisher import EventPublisher

log = logs.get(__name__)
_BEAT_SLICES = 10  # the heartbeat ticker wakes this often per interval, beating one slice
_Event = tuple[str, str, str, str, dict[str, Any]]  # role, key, CloudEvent type and id, data
_JOB = mapping.JOB_UPDATED


@dataclass(frozen=True, slots=True)
class WatchOptions:
    """
    Say how often the bridge beats, renews its leases and looks for new bindings.
    """

    heartbeat_interval_s: float = 10.0
    lease_s: float = 15.0
    unbound_grace_s: float = 300.0
    max_watches: int = 20_000
    max_opening: int = 64


@dataclass(slots=True)
class _Watched:
    workspace_id: str
    task: asyncio.Task[None] | None = None
    last_job: str | None = None  # the id of the last job update published
    agent_id: str | None = None  # the bound agent while it is connected
    lifecycle: str = ""


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
        self._opening = asyncio.Semaphore(options.max_opening)
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
        watched.task = asyncio.create_task(self._follow_one(watched))
        self._watched[workspace_id] = watched

    async def _follow_one(self, watched: _Watched) -> None:
        attempt = 0
        while True:
            try:
                streamed = await self._watch_once(watched)
            except coder_errors.WorkspaceGoneError:
                await self._gone(watched)
                return
            except (
                coder_errors.CoderUnavailableError,
                coder_errors.CoderProtocolError,
                kafka.BrokerError,  # not published: the next read publishes it again
            ) as exc:
                watched.agent_id = None  # unknown until we see it again: stop vouching for it
                delay_s = self._backoff.delay(
                    attempt, getattr(exc, "retry_after_s", None), self._rng
                )
                attempt += 1
                self.stats.reconnects += 1
                metrics.CODER_WATCH_RECONNECTS.inc()
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
        At most ``max_opening`` watches read and connect at once, so a restart or a
        Coder outage does not send every watch's requests to Coder in the same instant.
        """
        async with self._opening:
            snapshot = await self._coder.workspace(watched.workspace_id, include_deleted=True)
            if await self._seen(watched, snapshot):
                return None
            del snapshot
            stream = self._coder.watch(watched.workspace_id)
            following = await anext(stream, None)  # connected: Coder sent the workspace
        streamed = 0
        async with contextlib.aclosing(stream):
            while following is not None:
                streamed += 1
                if await self._seen(watched, following):
                    return None
                del following  # a watch is quiet for hours: hold no snapshot meanwhile
                following = await anext(stream, None)
        self.stats.reconnects += 1
        metrics.CODER_WATCH_RECONNECTS.inc()
        log.info("bridge_watch_reconnecting", workspace_id=watched.workspace_id)
        return streamed

    async def _seen(self, watched: _Watched, workspace: models.Workspace) -> bool:
        """
        Publish what changed in this snapshot; return True when the workspace is gone for good.

        A job update and a heartbeat from one snapshot (a build that succeeds
        with its agent already connected) go out together: one round trip.
        """
        view = mapping.job_update(workspace)
        jobs = int(view.ce_id != watched.last_job)
        events: list[_Event] = []
        if jobs:
            data = view.data
            events.append(("provisioner_job_updates", watched.workspace_id, _JOB, view.ce_id, data))
        agent_id, lifecycle = _connected(workspace)
        if agent_id is not None and (agent_id, lifecycle) != (watched.agent_id, watched.lifecycle):
            events.append(_heartbeat(watched.workspace_id, agent_id, lifecycle, datetime.now(UTC)))
        await self._publisher.send_all(events)
        watched.last_job = view.ce_id
        watched.agent_id, watched.lifecycle = agent_id, lifecycle
        self.stats.job_updates += jobs
        self.stats.heartbeats += len(events) - jobs
        metrics.BRIDGE_HEARTBEATS.inc(len(events) - jobs)
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

    async def _beat(self, stop: asyncio.Event) -> None:
        """
        Repeat each connected agent's heartbeat every interval, a tenth of the agents at a time.

        Spread over the interval, each tick stays short: all agents at once
        would hold the event loop for a long moment every interval (measured in
        docs/benchmarks.md), and a snapshot arriving then would wait for it.
        """
        tick = 0
        while not stop.is_set():
            await asyncio.sleep(self._options.heartbeat_interval_s / _BEAT_SLICES)
            tick = (tick + 1) % _BEAT_SLICES
            now = datetime.now(UTC)
            beats = [
                _heartbeat(w.workspace_id, w.agent_id, w.lifecycle, now)
                for w in list(self._watched.values())
                if w.agent_id is not None and hash(w.workspace_id) % _BEAT_SLICES == tick
            ]
            try:
                await self._publisher.send_all(beats)
            except Exception as exc:  # noqa: BLE001 - the next tick tries again
                log.warning("bridge_heartbeats_failed", error=str(exc), agents=len(beats))
            else:
                self.stats.heartbeats += len(beats)
                metrics.BRIDGE_HEARTBEATS.inc(len(beats))


def _connected(workspace: models.Workspace) -> tuple[str | None, str]:
    """
    Return the bound agent's id and lifecycle state while it is connected, else (None, "").
    """
    agent = mapping.bound_agent(workspace)
    if agent is None or agent.status is not models.AgentStatus.CONNECTED:
        return None, ""
    return str(agent.id), agent.lifecycle_state.value


def _heartbeat(workspace_id: str, agent_id: str, lifecycle: str, at: datetime) -> _Event:
    """
    Return the heartbeat of a connected agent seen at ``at``, as an event to publish.
    """
    data = mapping.heartbeat(workspace_id, agent_id, lifecycle, at)
    ce_id = mapping.event_id("beat", agent_id, data["occurred_at"])
    return ("agent_heartbeats", agent_id, mapping.HEARTBEAT, ce_id, data)


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
