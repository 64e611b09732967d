"""
Start PostgreSQL and the broker for a chaos run, and kill and restart them in place.

A restart keeps the data folder, the port and the command line of the first
start, so clients see the same server come back. Only Apache Kafka can be
restarted: Tansu keeps its data in memory, so a restarted Tansu has no topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg
import psutil

from bench.harness import say
from devtools.services import apache_kafka, postgres, process, tansu
from devtools.services.tansu import EmbeddedBroker

HOST = "127.0.0.1"


@dataclass(slots=True)
class ChaosServices:
    """
    The PostgreSQL server and the broker of one chaos run, which scenarios may kill.
    """

    pg: postgres.EmbeddedPostgres
    broker: EmbeddedBroker
    kind: str

    @property
    def bootstrap_servers(self) -> str:
        return self.broker.bootstrap_servers

    @property
    def broker_restartable(self) -> bool:
        return self.kind == "apache"

    def kill_postgres(self) -> int:
        """
        SIGKILL the postmaster, wait for its backends to notice and exit; return those killed.

        Backends exit by themselves once their postmaster is gone; any still
        there after 15 s are killed, since they would keep the shared memory
        a new postmaster refuses to share.
        """
        pid = self.pg.process.popen.pid
        children = psutil.Process(pid).children(recursive=True)
        os.kill(pid, signal.SIGKILL)
        self.pg.process.popen.wait(10)
        _, alive = psutil.wait_procs(children, timeout=15)
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(alive, timeout=5)
        return len(alive)

    def start_postgres_again(self, timeout_s: float = 60.0) -> float:
        """
        Start the postmaster again on the same data folder and port; return how long it took.
        """
        began = time.monotonic()
        argv = [str(a) for a in self.pg.process.popen.args]  # type: ignore[union-attr]
        pgdata = self.pg.data_dir / "data"
        user = pwd.getpwuid(pgdata.stat().st_uid).pw_name if os.geteuid() == 0 else None
        deadline = began + timeout_s
        while True:
            proc = process.ManagedProcess.start(
                "postgres",
                argv,
                log_path=self.pg.data_dir / "postgres.log",
                user=user,
                stop_signal=signal.SIGINT,
            )
            try:
                process.wait_for_port(
                    proc, HOST, self.pg.port, max(1.0, deadline - time.monotonic())
                )
            except process.ServiceError:
                # Typically the old shared memory is still attached: try again.
                proc.stop(5)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
                continue
            self.pg.process = proc
            return time.monotonic() - began

    def kill_broker(self) -> None:
        """
        SIGKILL the broker.
        """
        os.kill(self.broker.process.popen.pid, signal.SIGKILL)
        self.broker.process.popen.wait(30)

    def start_broker_again(self, timeout_s: float = 90.0) -> float:
        """
        Start Apache Kafka again with the same configuration, folder and ports.
        """
        if not self.broker_restartable:
            msg = "Tansu keeps its data in memory: a restart would lose every topic"
            raise RuntimeError(msg)
        began = time.monotonic()
        argv = [str(a) for a in self.broker.process.popen.args]  # type: ignore[union-attr]
        proc = process.ManagedProcess.start(
            "kafka", argv, log_path=self.broker.process.log_path, stop_signal=signal.SIGTERM
        )
        port = int(self.bootstrap_servers.rpartition(":")[2])
        process.wait_for_port(proc, HOST, port, timeout_s)
        self.broker.process = proc
        return time.monotonic() - began


@contextlib.contextmanager
def services(kind: str) -> Iterator[ChaosServices]:
    """
    Start PostgreSQL and the broker (``tansu`` or ``apache``); stop both at the end.
    """
    started: list[postgres.EmbeddedPostgres | EmbeddedBroker] = []
    try:
        pg = postgres.start()
        started.append(pg)
        say(f"PostgreSQL  {pg.url}  (up in {pg.startup_s:.1f} s)")
        broker = apache_kafka.start() if kind == "apache" else tansu.start()
        started.append(broker)
        say(f"Kafka       {broker.bootstrap_servers}  ({kind}, up in {broker.startup_s:.1f} s)")
        yield ChaosServices(pg, broker, kind)
    finally:
        for service in reversed(started):
            with contextlib.suppress(Exception):
                service.stop()


async def wait_accepting(url: str, timeout_s: float = 60.0) -> float:
    """
    Wait until PostgreSQL answers a query at ``url`` (recovery done); return how long.
    """
    began = time.monotonic()
    while True:
        try:
            conn = await asyncpg.connect(url, timeout=2)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            if time.monotonic() - began > timeout_s:
                raise
            await asyncio.sleep(0.1)
            continue
        await conn.close()
        return time.monotonic() - began
