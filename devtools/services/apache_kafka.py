"""
Run Apache Kafka as one KRaft node (broker and controller in one JVM) on 127.0.0.1.

The jars come from Maven Central through ``config/kafka/pom.xml`` (``make
kafka-jars`` copies them to ``.cache/kafka/libs``); the machine's Java runs them.
By default the client listener is PLAINTEXT; ``start(sasl_ssl=...)`` makes it
SASL_SSL with SCRAM-SHA-512 instead (the controller listener stays PLAINTEXT
on loopback).
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from devtools.services import process, scram
from devtools.services.tansu import EmbeddedBroker

_HOST = "127.0.0.1"
_DEFAULT_LIBS = Path(".cache/kafka/libs")

_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers={host}:{controller}
listeners={listener}://{host}:{port},CONTROLLER://{host}:{controller}
advertised.listeners={listener}://{host}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name={listener}
listener.security.protocol.map=CONTROLLER:PLAINTEXT,{listener}:{listener}
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

# SCRAM credentials live in the metadata log: the formatter writes them
# (``--add-scram``), and the broker uses the admin's to talk to itself.
_SASL_SSL = """\
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required \
username="{admin}" password="{admin_password}";
ssl.keystore.type=PKCS12
ssl.keystore.location={keystore}
ssl.keystore.password={keystore_password}
ssl.key.password={keystore_password}
ssl.truststore.type=PKCS12
ssl.truststore.location={truststore}
ssl.truststore.password={truststore_password}
ssl.client.auth=none
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


@dataclass(frozen=True, slots=True)
class SaslSsl:
    """
    Describe a SASL_SSL client listener: TLS from PKCS12 stores, SCRAM-SHA-512 users.

    The broker authenticates to itself as ``admin``; ``users`` (name to
    password) are the clients' SCRAM users. All are created when the storage
    is formatted, from salted credentials: no password is on a command line.
    """

    keystore: Path
    keystore_password: str = field(repr=False)
    truststore: Path
    truststore_password: str = field(repr=False)
    admin: str
    admin_password: str = field(repr=False)
    users: Mapping[str, str] = field(default_factory=dict, repr=False)

    def properties(self) -> str:
        """
        Return the broker properties of this listener.
        """
        # Passwords go into a properties file and a JAAS string: no quotes or
        # escapes, so neither format can misread them. Never echo them.
        for secret in (self.keystore_password, self.truststore_password, self.admin_password):
            if (
                not (secret.isascii() and secret.isprintable())
                or not secret
                or set(secret) & {'"', "\\"}
            ):
                msg = "broker passwords must be printable ASCII without quotes or backslashes"
                raise ValueError(msg)
        return _SASL_SSL.format(
            admin=self.admin,
            admin_password=self.admin_password,
            keystore=self.keystore.resolve(),
            keystore_password=self.keystore_password,
            truststore=self.truststore.resolve(),
            truststore_password=self.truststore_password,
        )

    def credentials(self) -> list[str]:
        """
        Return the ``--add-scram`` arguments of every user, the admin first.
        """
        users = {self.admin: self.admin_password, **self.users}
        return [
            arg
            for name, password in users.items()
            for arg in ("--add-scram", scram.kafka_credential(name, password))
        ]


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


def libs_dir() -> Path:
    """
    Return the folder of Kafka's jars (``$WORKSPACED_KAFKA_LIBS`` or ``.cache/kafka/libs``).
    """
    return Path(os.environ.get("WORKSPACED_KAFKA_LIBS", str(_DEFAULT_LIBS))).resolve()


def start(*, timeout_s: float = 90.0, sasl_ssl: SaslSsl | None = None) -> EmbeddedBroker:
    """
    Format a fresh storage folder and start Kafka on free ports; it dies with this process.

    With ``sasl_ssl`` the client listener is SASL_SSL (SCRAM-SHA-512), else PLAINTEXT.
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
    listener = "PLAINTEXT" if sasl_ssl is None else "SASL_SSL"
    text = _PROPERTIES.format(
        listener=listener, host=_HOST, port=port, controller=controller, data=base / "data"
    )
    props.write_text(text if sasl_ssl is None else text + sasl_ssl.properties())
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
                *(sasl_ssl.credentials() if sasl_ssl else []),
            ],
            check=True,
            capture_output=True,
            timeout=timeout_s,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        # Not str(exc): it quotes the command line, SCRAM credentials included.
        output = (exc.stderr or b"").decode(errors="replace")
        msg = f"formatting Kafka storage in {base} failed ({type(exc).__name__})\n{output}"
        raise process.ServiceError(msg) from None
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
