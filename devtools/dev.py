"""
Run everything on one machine: embedded PostgreSQL and Tansu, the daemon, the bridge, a Coder.

The Coder is the fake one (``devtools.fake_coder``, over real HTTP) unless
``--coder-url`` names a real one (its token from
``WORKSPACED_CODER_SESSION_TOKEN``); ``--simulator`` uses the Kafka-level
simulator instead of bridge and Coder, as the benchmarks do. A PostgreSQL or
Kafka named in the environment (``WORKSPACED_DATABASE_URL``,
``WORKSPACED_KAFKA_BOOTSTRAP_SERVERS``) is used instead of the embedded one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from consumers import codec, kafka
from devtools import simulator
from devtools.fake_coder.server import FakeCoder, FakeCoderOptions
from devtools.services import postgres, tansu
from storage import migrate
from telemetry import logs
from workspaced import daemon, settings, status
from workspaced.bridge import app as bridge

log = logs.get(__name__)
TEMPLATE_ID = "8a1b2c3d-4e5f-4a6b-9c7d-0e1f2a3b4c5d"
PEOPLE = ("alice", "bob", "carol", "dave", "erin")


def owner_id(person: str) -> str:
    """
    Return the demo user id of ``person``: stable, so reruns show the same users.
    """
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"workspaced-demo:{person}"))


def _say(text: str) -> None:
    print(text, flush=True)  # noqa: T201


async def _create_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def main(  # noqa: PLR0913 - the command's own flags
    conf: settings.Settings,
    options: simulator.SimulatorOptions,
    *,
    demo: bool,
    data_dir: Path | None,
    coder_url: str | None = None,
    use_simulator: bool = False,
) -> int:
    """
    Start the services this machine lacks, then migrate, run and simulate until interrupted.
    """
    started: list[Any] = []
    overrides: dict[str, Any] = {}
    try:
        if "WORKSPACED_DATABASE_URL" not in os.environ:
            pg = postgres.start(data_dir)
            started.append(pg)
            asyncio.run(_create_database(pg.url, "workspaced"))
            overrides["database_url"] = pg.database_url("workspaced")
            url = pg.database_url("workspaced")
            _say(f"PostgreSQL  {url}  (embedded, up in {pg.startup_s:.2f} s)")
        if "WORKSPACED_KAFKA_BOOTSTRAP_SERVERS" not in os.environ:
            broker = tansu.start()
            started.append(broker)
            # Tansu makes a consumer wait about half the session timeout to join.
            overrides |= {
                "kafka_bootstrap_servers": broker.bootstrap_servers,
                "kafka_session_timeout_ms": 2000,
                "kafka_heartbeat_interval_ms": 300,
                "kafka_fetch_max_wait_ms": 10,
            }
            up = f"embedded Tansu, up in {broker.startup_s:.2f} s"
            _say(f"Kafka       {broker.bootstrap_servers}  ({up})")
        if coder_url is not None:
            overrides["coder_url"] = coder_url
        merged = settings.explicit(**{**conf.model_dump(), **overrides})
        return asyncio.run(_dev(merged, options, demo=demo, use_simulator=use_simulator))
    finally:
        for service in reversed(started):
            service.stop()


async def _dev(
    conf: settings.Settings,
    options: simulator.SimulatorOptions,
    *,
    demo: bool,
    use_simulator: bool,
) -> int:
    dsn = conf.database_url.get_secret_value()
    applied = await migrate.migrate(dsn, daemon.settings_rows(conf))
    _say(f"schema      {'applied ' + ', '.join(applied) if applied else 'up to date'}")
    await kafka.ensure_topics(conf.kafka_config())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    fake: FakeCoder | None = None
    if use_simulator:
        coder_task = simulator.CoderSimulator(conf, options).run(stop)
        _say("Coder       the Kafka-level simulator")
    else:
        if conf.coder_url is None:
            fake = FakeCoder(FakeCoderOptions(job_step_s=0.3, agent_connect_delay_s=0.3))
            for person in PEOPLE:  # the demo's users, by name, as a real Coder would have them
                fake.add_user(uuid.UUID(owner_id(person)), person)
            url = await fake.start()
            conf = settings.explicit(
                **{**conf.model_dump(), "coder_url": url, "coder_session_token": fake.session_token}
            )
            _say(f"Coder       {url}  (the fake Coder, over HTTP)")
        else:
            _say(f"Coder       {conf.coder_url}")
        coder_task = bridge.run(conf, stop)
    tasks = [
        asyncio.create_task(daemon.run(conf, stop), name="daemon"),
        asyncio.create_task(coder_task, name="coder"),
    ]
    if demo:
        tasks.append(asyncio.create_task(_demo(conf, stop, fake), name="demo"))
    if conf.metrics_address:
        _say(f"metrics     http://{conf.metrics_address}/metrics  (and /healthz, /readyz)")
    _say("workspaced  running; press Ctrl-C to stop\n")
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        if fake is not None:
            await fake.stop()
    failures = [r for r in results if isinstance(r, BaseException)]
    for failure in failures:
        log.error("dev_task_failed", error=str(failure))
    return 1 if failures else 0


def _calls() -> list[tuple[str, str, dict[str, Any]]]:
    """
    Return (label, chat_id, tool call data) for the demo.
    """
    chats = {n: str(uuid.uuid4()) for n in PEOPLE}

    def call(chat: str, **arguments: Any) -> dict[str, Any]:
        return {
            "tool_call_id": f"call_{uuid.uuid4().hex[:12]}",
            "chat_id": chats[chat],
            "owner_id": owner_id(chat),
            "tool": "create_workspace",
            "arguments": {"template_id": TEMPLATE_ID, **arguments},
            "template_name": "Python Dev",
        }

    return [
        ("alice asks for 'dev'", chats["alice"], call("alice", name="dev")),
        ("bob asks with no name", chats["bob"], call("bob")),
        ("carol's build will fail", chats["carol"], call("carol", name="fail-fast")),
        ("alice asks again (repeat)", chats["alice"], call("alice", name="dev")),
        ("dave has no agent", chats["dave"], call("dave", name="noagent-box")),
        ("erin gives a bad template", chats["erin"], call("erin", template_id="not-a-uuid")),
    ]


async def _demo(conf: settings.Settings, stop: asyncio.Event, fake: FakeCoder | None) -> None:
    calls = _calls()
    names = {data["tool_call_id"]: label for label, _, data in calls}
    producer = kafka.producer(conf.kafka_config(), "workspaced-demo")
    results = kafka.consumer(
        conf.kafka_config(),
        [conf.topic("tool_results")],
        client_id="workspaced-demo",
        group_id=f"demo-{uuid.uuid4()}",
    )
    await producer.start()
    await results.start()
    began = time.monotonic()
    try:
        for label, chat_id, data in calls:
            headers = codec.encode_headers(
                "demo-chat", str(uuid.uuid4()), "chat.tool_call.v1", datetime.now(UTC)
            )
            await producer.send_and_wait(
                conf.topic("tool_calls"), orjson.dumps(data), key=chat_id.encode(), headers=headers
            )
            _say(f"→ tool call   {label}")
        answered = 0
        while answered < len(calls) and not stop.is_set() and time.monotonic() - began < 60:
            batch = await results.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    result = orjson.loads(record.value)
                    label = names.get(result["tool_call_id"], result["tool_call_id"])
                    answered += 1
                    elapsed = time.monotonic() - began
                    content = orjson.dumps(result["content"]).decode()
                    _say(f"← result      {label} after {elapsed:.1f} s: {content}")
        _say("")
        if fake is not None:
            _say("the bridge's calls to the fake Coder, over HTTP")
            rows = sorted(fake.counters.requests.items())
            _say(status.table(["method", "route", "status", "calls"], [(*k, n) for k, n in rows]))
            _say("")
        _say(await status.report(conf.database_url.get_secret_value(), 20))
        _say(
            "\nthe demo is done; the daemon keeps running (Ctrl-C to stop). "
            "`workspaced status` shows the same tables."
        )
    finally:
        with contextlib.suppress(Exception):
            await results.stop()
            await producer.stop()
        sys.stdout.flush()
