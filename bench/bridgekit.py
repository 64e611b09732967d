"""
The fake Coder and the bridge process as the bridge scenarios drive them, and two tools.

The fake (``devtools.fake_coder``) is served from the benchmark's process over
real HTTP, so the benchmark changes its world directly and records the
instant; the bridge runs as its own ``workspaced bridge`` process, so its CPU
and RSS are its own (``BENCH_BRIDGE_PROFILE=FILE`` runs it under
pyinstrument, ``BENCH_BRIDGE_TRACEMALLOC=FILE`` under tracemalloc, dumped
when the ``watching`` scenario has measured).

Tools run in other processes (``python -m bench.bridgekit``):

- ``probe URL WORKSPACE``: the floor's bare watch client (token in
  ``BENCH_PROBE_TOKEN``); prints the monotonic clock at each snapshot
  ``coder.client`` yields;
- ``traced OUT``: ``workspaced bridge`` under tracemalloc; on SIGUSR1 it writes
  what is allocated, by line, to OUT.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import harness
from bench.harness import Stack
from devtools.fake_coder import FakeCoder, FakeCoderOptions
from devtools.fake_coder.state import Agent, Build, Job, Resource, Workspace, derive, now
from devtools.services import process

# -- the fake and the bridge ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def fake_coder(options: FakeCoderOptions) -> AsyncIterator[FakeCoder]:
    fake = FakeCoder(options)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@dataclass
class Bridge:
    managed: process.ManagedProcess
    meter: harness.ProcessMeter


@contextlib.asynccontextmanager
async def running_bridge(st: Stack, fake: FakeCoder, **settings: Any) -> AsyncIterator[Bridge]:
    """
    Run ``workspaced bridge`` on the stack's database and topics against ``fake``; stop it first.
    """
    conf = st.conf.model_copy(
        update={"coder_url": fake.url, "coder_session_token": fake.session_token, **settings}
    )
    log_path = harness.RESULTS / "logs" / f"{st.name}-bridge.log"
    log_path.unlink(missing_ok=True)
    argv = [str(harness.BIN / "workspaced"), "bridge"]
    if profile_to := os.environ.get("BENCH_BRIDGE_PROFILE"):
        argv = [str(harness.BIN / "pyinstrument"), "-o", profile_to, "--renderer", "text"]
        argv += ["-m", "workspaced.cli", "bridge"]
    elif traced_to := os.environ.get("BENCH_BRIDGE_TRACEMALLOC"):
        argv = [sys.executable, "-m", "bench.bridgekit", "traced", traced_to]
    managed = process.ManagedProcess.start(
        "bridge",
        argv,
        log_path=log_path,
        env=harness.daemon_env(conf),
        cwd=harness.ROOT,
    )
    try:
        yield Bridge(managed, harness.ProcessMeter(managed.popen.pid))
    finally:
        await asyncio.to_thread(managed.stop, 30.0)


def watched(fake: FakeCoder) -> set[str]:
    """
    Return the workspaces the fake has an open watch on.
    """
    return {str(w.workspace_id) for w in fake.hub.watchers}


def ready_workspace(fake: FakeCoder, name: str) -> Workspace:
    """
    Put a workspace in the fake whose start build succeeded and whose agent is connected, ready.
    """
    world = fake.world
    owner = world.user_by_id(uuid.UUID(harness.OWNER_ID))
    template = world.template(uuid.UUID(harness.TEMPLATE_ID))
    assert template is not None
    moment = now()
    job = Job(uuid.uuid4(), moment, "succeeded", moment, moment, worker_id=derive("worker"))
    workspace = Workspace(uuid.uuid4(), name, owner, template, moment, moment, None)
    build = Build(uuid.uuid4(), 1, "start", job, template.active_version_id, owner, moment, moment)
    _add_agent(build, moment)
    workspace.builds.append(build)
    world.workspaces[workspace.id] = workspace
    return workspace


def _add_agent(build: Build, moment: Any) -> Agent:
    resource = Resource(derive("resource", build.id), build.job.id, moment, "start", "vm", "main")
    agent = Agent(derive("agent", build.id), resource.id, "main", moment, 120)
    agent.status, agent.lifecycle_state = "connected", "ready"
    agent.first_connected_at = agent.last_connected_at = agent.started_at = moment
    agent.ready_at = agent.updated_at = moment
    resource.agents.append(agent)
    build.resources.append(resource)
    return agent


def succeed_with_agent(fake: FakeCoder, workspace_id: str) -> None:
    """
    Finish the workspace's running start job, its agent already connected: one change.
    """
    workspace = fake.world.workspaces[uuid.UUID(workspace_id)]
    build = workspace.latest_build
    moment = now()
    build.job.status, build.job.completed_at = "succeeded", moment
    _add_agent(build, moment)
    fake.world.touch(workspace)


def start_job(fake: FakeCoder, workspace_id: str) -> None:
    workspace = fake.world.workspaces[uuid.UUID(workspace_id)]
    job = workspace.latest_build.job
    job.status, job.started_at, job.worker_id = "running", now(), derive("worker")
    fake.world.touch(workspace)


async def watch_hop(fake: FakeCoder, samples: int) -> list[float]:
    """
    Time a change in the fake to the snapshot ``coder.client`` yields in a bare other process.
    """
    workspace = ready_workspace(fake, f"probe-{uuid.uuid4().hex[:8]}")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.bridgekit",
        "probe",
        fake.url,
        str(workspace.id),
        stdout=asyncio.subprocess.PIPE,
        env=os.environ | {"BENCH_PROBE_TOKEN": fake.session_token},
        cwd=harness.ROOT,
        preexec_fn=harness.die_with_parent,
    )
    assert proc.stdout is not None
    try:
        await asyncio.wait_for(proc.stdout.readline(), 30)  # the first snapshot
        out = []
        for _ in range(samples):
            await asyncio.sleep(random.uniform(0.01, 0.03))
            changed = time.monotonic()
            fake.world.touch(workspace)
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
            out.append((float(line) - changed) * 1000)
        return out
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def probe(url: str, workspace_id: str) -> None:
    from coder.client import CoderClient  # noqa: PLC0415 - only the probe process needs it

    async with CoderClient(url, os.environ["BENCH_PROBE_TOKEN"]) as client:
        async for _ in client.watch(workspace_id):
            sys.stdout.write(f"{time.monotonic()!r}\n")
            sys.stdout.flush()


def traced(out: str) -> int:
    """
    Run ``workspaced bridge`` under tracemalloc; on SIGUSR1 write what is allocated, by line.
    """
    import tracemalloc  # noqa: PLC0415

    from workspaced import cli  # noqa: PLC0415

    tracemalloc.start(1)

    def dump(*_: object) -> None:
        stats = tracemalloc.take_snapshot().statistics("lineno")
        total = sum(s.size for s in stats)
        lines = [f"{total / 2**20:.1f} MB traced in {sum(s.count for s in stats)} blocks"]
        lines += [f"{s.size / 2**10:10.0f} KB {s.count:8d}  {s.traceback}" for s in stats[:60]]
        Path(out).write_text("\n".join(lines) + "\n")

    signal.signal(signal.SIGUSR1, dump)
    return cli.main(["bridge"])


if __name__ == "__main__":
    if sys.argv[1:2] == ["probe"] and len(sys.argv) == 4:
        asyncio.run(probe(sys.argv[2], sys.argv[3]))
    elif sys.argv[1:2] == ["traced"] and len(sys.argv) == 3:
        sys.exit(traced(sys.argv[2]))
    else:
        sys.exit("usage: python -m bench.bridgekit probe URL WORKSPACE_ID | traced OUT")
