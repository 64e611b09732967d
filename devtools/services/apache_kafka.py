"""
Run Apache Kafka as one KRaft node (broker and controller in one JVM) on 127.0.0.1.

The jars come from Maven Central through ``config/kafka/pom.xml`` (``make
kafka-jars`` copies them to ``.cache/kafka/libs``); the machine's Java runs them.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from devtools.services import process
from devtools.services.tansu import EmbeddedBroker

_HOST = "127.0.0.1"
_DEFAULT_LIBS = Path(".cache/kafka/libs")

_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers={host}:{controller}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data}
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
auto.create.topics.enable=false
log.cleaner.dedupe.buffer.size=8388608
log.cleaner.threads=1
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
"""

_LOG4J = """\
status = warn
appender.file.type = File
appender.file.name = F
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.f.ref = F
"""


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


def libs_dir() -> Path:
    """
    Return the folder of Kafka's jars (``$WORKSPACED_KAFKA_LIBS`` or ``.cache/kafka/libs``).
    """
    return Path(os.environ.get("WORKSPACED_KAFKA_LIBS", str(_DEFAULT_LIBS))).resolve()


def start(*, timeout_s: float = 90.0) -> EmbeddedBroker:
    """
    Format a fresh storage folder and start Kafka on free ports; it dies with this process.
    """
    began = time.monotonic()
    libs = libs_dir()
    java = shutil.which("java")
    if java is None or not any(libs.glob("kafka_2.13-*.jar")):
        msg = f"Apache Kafka needs java on PATH and the jars in {libs} (run `make kafka-jars`)"
        raise process.ServiceError(msg)
    base = Path(tempfile.mkdtemp(prefix="workspaced-kafka-"))
    port, controller = process.free_port(_HOST), process.free_port(_HOST)
    props = base / "server.properties"
    props.write_text(
        _PROPERTIES.format(host=_HOST, port=port, controller=controller, data=base / "data")
    )
    log4j = base / "log4j2.properties"
    log4j.write_text(_LOG4J.format(log=base / "kafka-server.log"))
    classpath = str(libs / "*")
    jvm = [java, f"-Dlog4j2.configurationFile={log4j}", "-cp", classpath]
    try:
        subprocess.run(  # noqa: S603 - argv built here
            [
                *jvm,
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                _cluster_id(),
                "-c",
                str(props),
            ],
            check=True,
            capture_output=True,
            timeout=timeout_s,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        output = (getattr(exc, "stderr", b"") or b"").decode(errors="replace")
        msg = f"formatting Kafka storage failed: {exc}\n{output}"
        raise process.ServiceError(msg) from exc
    argv = [
        java,
        "-Xms64m",
        "-Xmx256m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        *jvm[1:],
        "kafka.Kafka",
        str(props),
    ]
    proc = process.ManagedProcess.start(
        "kafka", argv, log_path=base / "kafka.out", stop_signal=signal.SIGTERM
    )
    process.wait_for_port(proc, _HOST, port, timeout_s)
    return EmbeddedBroker(proc, f"{_HOST}:{port}", time.monotonic() - began, base, "apache")
