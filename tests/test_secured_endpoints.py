"""
Secured endpoints: the real daemon on Kafka over SASL_SSL and on PostgreSQL over TLS with a password.

This module starts its own services, independent of the session's: Apache
Kafka whose only client listener is SASL_SSL (SCRAM-SHA-512), and PostgreSQL
that takes only TLS connections and SCRAM-SHA-256 logins. Both present
certificates of an authority made here; a second authority that signed
nothing stands for "the wrong CA". Every line the processes print, the
``status`` output, every error and every dead letter is searched for each
password, as typed and URL-encoded.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import asyncpg
import orjson
import pytest

from consumers import kafka
from devtools import tls
from devtools.services import apache_kafka, postgres
from devtools.services.tansu import EmbeddedBroker
from tests.bus import Bus, new_id
from workspaced import settings
from workspaced.settings import Settings

pytestmark = pytest.mark.e2e

KAFKA_USER = "workspaced"
DATABASE_ROLE = "workspaced"
DATABASE = "workspaced"
EXIT_WITHIN_S = 30.0


def _password(label: str) -> str:
    # Characters that URL-encoding changes, around a random core that cannot
    # occur by chance: a leak in either form is found.
    return f"{label}@:/%+ ?#&={secrets.token_urlsafe(18)}"


@dataclass(frozen=True)
class Secured:
    broker: EmbeddedBroker
    database: postgres.EmbeddedPostgres
    ca_file: Path
    wrong_ca_file: Path
    kafka_password: str = field(repr=False)
    database_password: str = field(repr=False)
    wrong_kafka_password: str = field(repr=False)
    wrong_database_password: str = field(repr=False)

    def database_url(self, *, password: str | None = None, ca_file: Path | None = None) -> str:
        secret = quote(self.database_password if password is None else password, safe="")
        root = ca_file or self.ca_file
        return (
            f"postgresql://{DATABASE_ROLE}:{secret}@127.0.0.1:{self.database.port}/{DATABASE}"
            f"?sslmode=verify-full&sslrootcert={root}"
        )

    def settings(self, **overrides: Any) -> Settings:
        suffix = uuid.uuid4().hex[:10]
        values: dict[str, Any] = {
            "database_url": self.database_url(),
            "kafka_bootstrap_servers": self.broker.bootstrap_servers,
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_sasl_username": KAFKA_USER,
            "kafka_sasl_password": self.kafka_password,
            "kafka_ssl_cafile": self.ca_file,
            "topic_prefix": f"t{suffix}.",
            "consumer_group": f"g{suffix}",
            "kafka_session_timeout_ms": 2000,
            "kafka_heartbeat_interval_ms": 300,
            "topic_partitions": 2,
            "outbox_sweep_seconds": 1.0,
            "log_level": "info",
            "log_format": "json",
        } | overrides
        return settings.explicit(**values)

    def needles(self) -> dict[str, str]:
        """
        Return every form of every password that must never be printed, by what it is.
        """
        found = {}
        for name in (
            "kafka_password",
            "database_password",
            "wrong_kafka_password",
            "wrong_database_password",
        ):
            value: str = getattr(self, name)
            core = value.rpartition("=")[2]
            for form, text in (
                ("as typed", value),
                ("URL-encoded", quote(value, safe="")),
                ("URL-encoded (form)", quote_plus(value)),
                ("random part", core),
            ):
                found[text] = f"{name} {form}"
        return found


class Transcript:
    """
    Collect everything the daemon and its tools showed: logs, outputs, errors, dead letters.
    """

    def __init__(self, secured: Secured) -> None:
        self.secured = secured
        self.parts: list[tuple[str, str]] = []

    def add(self, label: str, text: str | bytes | None) -> None:
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        self.parts.append((label, text or ""))

    def add_records(self, bus: Bus) -> None:
        for role, records in bus.received.items():
            for record in records:
                self.add(f"{role} key", record.key)
                self.add(f"{role} headers", repr(record.headers))
                self.add(f"{role} value", record.value)
        for raw in bus.raw_dead_letters:
            self.add("dead letter as Kafka gave it", repr(raw))

    def add_service_logs(self) -> None:
        broker_logs = sorted(self.secured.broker.log_dir.glob("*.out"))
        broker_logs += sorted(self.secured.broker.log_dir.glob("*.log"))
        for path in broker_logs:
            self.add(f"broker {path.name}", path.read_bytes())
        self.add("postgres log", self.secured.database.process.log_path.read_bytes())

    def assert_no_password(self) -> None:
        assert self.parts, "nothing was captured"
        leaks = [
            f"{what} in {label}"
            for label, text in self.parts
            for needle, what in self.secured.needles().items()
            if needle in text
        ]
        assert not leaks, "a password was shown:\n" + "\n".join(sorted(set(leaks)))


@pytest.fixture(scope="module")
async def secured(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Secured]:
    folder = tmp_path_factory.mktemp("secured")
    authority = tls.Authority.create("workspaced test CA")
    server = authority.issue(["127.0.0.1", "localhost"])
    ca_file = authority.write_pem(folder / "ca.pem")
    wrong_ca_file = tls.Authority.create("some other CA").write_pem(folder / "wrong-ca.pem")
    certificate, key = server.write_pem(folder / "server.pem", folder / "server.key")
    store_password = secrets.token_hex(12)
    listener = apache_kafka.SaslSsl(
        keystore=server.write_keystore(folder / "broker.p12", store_password),
        keystore_password=store_password,
        truststore=authority.write_truststore(folder / "trust.p12", store_password),
        truststore_password=store_password,
        admin="broker",
        admin_password=secrets.token_hex(16),
        users={KAFKA_USER: (kafka_password := _password("kafka"))},
    )
    # Started from this thread, not a worker: a service dies with the thread
    # that started it (PR_SET_PDEATHSIG), and this one lives as long as the tests.
    broker = apache_kafka.start(sasl_ssl=listener)
    try:
        database = postgres.start(tls=postgres.ServerTLS(certificate, key))
    except BaseException:
        broker.stop()
        raise
    try:
        database_password = _password("database")
        database.set_password(DATABASE_ROLE, database_password)
        admin = await asyncpg.connect(database.url)
        try:
            await admin.execute(f'CREATE DATABASE "{DATABASE}" OWNER "{DATABASE_ROLE}"')
            # The daemon's login has no CREATEROLE, as in production: an
            # administrator makes the dashboards' role (docs/dashboard.md).
            await admin.execute("CREATE ROLE workspaced_reader NOLOGIN")
        finally:
            await admin.close()
        yield Secured(
            broker,
            database,
            ca_file,
            wrong_ca_file,
            kafka_password,
            database_password,
            _password("wrongkafka"),
            _password("wrongdatabase"),
        )
    finally:
        database.stop()
        broker.stop()


def _env(conf: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKSPACED_")}
    return env | conf.environment()


async def _start(conf: Settings, command: str, log: Path) -> asyncio.subprocess.Process:
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "workspaced.cli",
            command,
            env=_env(conf),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )


async def _exit_code(proc: asyncio.subprocess.Process, log: Path, timeout_s: float) -> int:
    try:
        return await asyncio.wait_for(proc.wait(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        output = await asyncio.to_thread(log.read_text)
        msg = f"{log.stem} did not exit within {timeout_s:.0f} s:\n{output}"
        raise AssertionError(msg) from None


async def _cli(conf: Settings, command: str, log: Path) -> tuple[int, str]:
    """
    Run ``workspaced COMMAND`` to its end (at most ``EXIT_WITHIN_S``); return its code and output.
    """
    proc = await _start(conf, command, log)
    code = await _exit_code(proc, log, EXIT_WITHIN_S)
    return code, await asyncio.to_thread(log.read_text)


async def _daemon_sessions_use_tls(secured: Secured) -> set[bool]:
    """
    Return, for the sessions of the daemon's role, whether each uses TLS (as a set).
    """
    admin = await asyncpg.connect(secured.database.url)
    try:
        rows = await admin.fetch(
            "SELECT DISTINCT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
            "WHERE a.usename = $1",
            DATABASE_ROLE,
        )
    finally:
        await admin.close()
    return {r["ssl"] for r in rows}


def _events(output: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in output.splitlines() if line.startswith("{")]


def _assert_failed_clearly(code: int, output: str, *reasons: str) -> None:
    """
    Assert a start that failed: non-zero, no traceback, a last line that says why.
    """
    assert code != 0, output
    assert "Traceback" not in output, output
    events = _events(output)
    assert events, output
    assert events[-1]["event"] == "command_failed", output
    assert events[-1]["command"] == "run", output
    for reason in reasons:
        assert reason in output, f"{reason!r} not in:\n{output}"


async def test_the_servers_refuse_clients_without_tls(secured: Secured) -> None:
    transcript = Transcript(secured)
    plain_url = secured.database_url().replace("sslmode=verify-full", "sslmode=disable")
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError) as refused:
        await asyncpg.connect(plain_url)
    transcript.add("plain PostgreSQL connection", str(refused.value))
    assert "no encryption" in str(refused.value)
    plain = kafka.KafkaConfig(secured.broker.bootstrap_servers, topic_prefix="plain.")
    async with asyncio.timeout(EXIT_WITHIN_S):
        with pytest.raises(kafka.BrokerError) as broken:
            await kafka.ensure_topics(plain)
    transcript.add("PLAINTEXT Kafka client", str(broken.value))
    transcript.add_service_logs()
    transcript.assert_no_password()


async def test_the_daemon_answers_a_tool_call_over_sasl_ssl_and_postgresql_tls(
    secured: Secured, tmp_path: Path
) -> None:
    transcript = Transcript(secured)
    conf = secured.settings()
    code, output = await _cli(conf, "migrate", tmp_path / "migrate.log")
    transcript.add("migrate output", output)
    assert code == 0, output
    await kafka.ensure_topics(conf.kafka_config())
    daemon_log = tmp_path / "run.log"
    daemon = await _start(conf, "run", daemon_log)
    try:
        async with Bus(conf) as bus:
            chat = new_id()
            call = await bus.tool_call(chat, name="dev")
            (command,) = await bus.command_for(chat, timeout_s=EXIT_WITHIN_S)
            ws = await bus.created(command)
            agent = new_id()
            await bus.job(ws, "succeeded", agents=[agent])
            await bus.heartbeat(agent, ws["workspace_id"])
            (result,) = await bus.results_for(call, timeout_s=EXIT_WITHIN_S)
            assert result["content"] == {"created": True, "workspace_name": "alice/dev"}
            # A record the daemon cannot read: its dead letter is searched too.
            await bus.publish("tool_calls", chat, "chat.tool_call.v1", None, value=b"\xff{not")
            await bus.wait_for("dead_letters", timeout_s=EXIT_WITHIN_S)
            transcript.add_records(bus)
        assert await _daemon_sessions_use_tls(secured) == {True}, "TLS sessions only"
        code, status = await _cli(conf, "status", tmp_path / "status.log")
        transcript.add("status output", status)
        assert code == 0, status
        assert re.search(r"^ready +1 *$", status, re.MULTILINE), status
    finally:
        if daemon.returncode is None:
            daemon.send_signal(signal.SIGTERM)
        code = await _exit_code(daemon, daemon_log, EXIT_WITHIN_S)
        transcript.add("daemon output", daemon_log.read_text())
    output = daemon_log.read_text()
    assert code == 0, output
    started = next(e for e in _events(output) if e["event"] == "daemon_started")
    assert started["kafka"] == secured.broker.bootstrap_servers
    assert ":***@" in started["database"], "the logged URL says a password was given, not which"
    assert any(e["event"] == "daemon_stopped" for e in _events(output)), output
    transcript.add_service_logs()
    transcript.assert_no_password()


async def test_a_daemon_given_the_wrong_ca_refuses_kafka_and_postgresql_and_exits(
    secured: Secured, tmp_path: Path
) -> None:
    transcript = Transcript(secured)
    not_a_ca = tmp_path / "not-a-ca.pem"
    not_a_ca.write_text("this file holds no certificate\n")
    wrong_for_kafka = secured.settings(kafka_ssl_cafile=secured.wrong_ca_file)
    wrong_for_database = secured.settings(
        database_url=secured.database_url(ca_file=secured.wrong_ca_file)
    )
    no_ca_for_kafka = secured.settings(kafka_ssl_cafile=not_a_ca)
    no_ca_for_database = secured.settings(database_url=secured.database_url(ca_file=not_a_ca))
    (
        (kafka_code, kafka_out),
        (database_code, database_out),
        (no_kafka_code, no_kafka_out),
        (no_database_code, no_database_out),
    ) = await asyncio.gather(
        _cli(wrong_for_kafka, "run", tmp_path / "kafka-ca.log"),
        _cli(wrong_for_database, "run", tmp_path / "database-ca.log"),
        _cli(no_ca_for_kafka, "run", tmp_path / "kafka-no-ca.log"),
        _cli(no_ca_for_database, "run", tmp_path / "database-no-ca.log"),
    )
    transcript.add("daemon with the wrong Kafka CA", kafka_out)
    transcript.add("daemon with the wrong PostgreSQL CA", database_out)
    transcript.add("daemon with no Kafka CA in the file", no_kafka_out)
    transcript.add("daemon with no PostgreSQL CA in the file", no_database_out)
    _assert_failed_clearly(
        kafka_code, kafka_out, "CERTIFICATE_VERIFY_FAILED", secured.broker.bootstrap_servers
    )
    _assert_failed_clearly(database_code, database_out, "CERTIFICATE_VERIFY_FAILED")
    # Kafka was fine there: the failure is the database's.
    assert "Unable to bootstrap" not in database_out, database_out
    _assert_failed_clearly(
        no_kafka_code, no_kafka_out, f"cannot load the CA file {not_a_ca} for Kafka TLS"
    )
    _assert_failed_clearly(no_database_code, no_database_out, "NO_CERTIFICATE_OR_CRL_FOUND")
    transcript.add_service_logs()
    transcript.assert_no_password()


async def test_a_daemon_given_a_wrong_password_names_what_refused_it_and_exits(
    secured: Secured, tmp_path: Path
) -> None:
    transcript = Transcript(secured)
    wrong_for_kafka = secured.settings(kafka_sasl_password=secured.wrong_kafka_password)
    wrong_for_database = secured.settings(
        database_url=secured.database_url(password=secured.wrong_database_password)
    )
    (kafka_code, kafka_out), (database_code, database_out) = await asyncio.gather(
        _cli(wrong_for_kafka, "run", tmp_path / "kafka-password.log"),
        _cli(wrong_for_database, "run", tmp_path / "database-password.log"),
    )
    transcript.add("daemon with a wrong Kafka password", kafka_out)
    transcript.add("daemon with a wrong PostgreSQL password", database_out)
    _assert_failed_clearly(
        kafka_code,
        kafka_out,
        "SaslAuthenticationFailed",
        "invalid credentials with SASL mechanism SCRAM-SHA-512",
    )
    _assert_failed_clearly(
        database_code,
        database_out,
        "InvalidPasswordError",
        f'password authentication failed for user \\"{DATABASE_ROLE}\\"',
    )
    transcript.add_service_logs()
    transcript.assert_no_password()
