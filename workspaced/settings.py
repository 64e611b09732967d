"""
Load the one typed settings object, from defaults up to environment variables.

Order, later wins: defaults in this module, ``config/*.toml`` (sorted by
name; the folder is ``$WORKSPACED_CONFIG_DIR`` or ``./config``), the
``--config`` file, then ``WORKSPACED_*`` environment variables.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from consumers import kafka

PositiveSeconds = Annotated[float, Field(gt=0)]
TOPIC_NAMES = tuple(kafka.TOPICS)


class SettingsError(Exception):
    """
    Raise when settings are invalid; the message names every bad setting.
    """


class Settings(BaseSettings):
    """
    Hold every setting of workspaced, validated at start-up.
    """

    model_config = SettingsConfigDict(
        env_prefix="WORKSPACED_", extra="forbid", frozen=True, validate_default=True
    )

    # Where things are.
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    database_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/workspaced")
    topic_prefix: str = ""
    consumer_group: str = "workspaced"
    source: str = Field("workspaced", min_length=1)

    # Production Kafka.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    # Apache Kafka refuses sessions under group.min.session.timeout.ms (6 s by
    # default); the embedded brokers allow shorter ones, which make joins fast.
    # It bounds how long a SIGKILLed instance's partitions stay unserved
    # (measured: session + ~0.5 s on Apache Kafka, + ~5 s on Tansu): 6 s is
    # the lowest stock Apache Kafka accepts (group.min.session.timeout.ms).
    kafka_session_timeout_ms: int = Field(6_000, ge=1000, le=300_000)
    kafka_heartbeat_interval_ms: int = Field(1_000, ge=100, le=60_000)
    # Apache Kafka answers a waiting fetch as soon as data arrives; Tansu does
    # not, so with it this wait is latency (dev and tests use 10 ms on Tansu).
    kafka_fetch_max_wait_ms: int = Field(100, ge=1, le=10_000)
    topic_partitions: int = Field(8, ge=1, le=10_000)
    topic_replication_factor: int = Field(1, ge=1, le=10)

    # Timers (spec R6, R11) and their create-side companion.
    build_timeout_seconds: PositiveSeconds = 600.0
    agent_connect_timeout_seconds: PositiveSeconds = 120.0
    agent_inactivity_timeout_seconds: PositiveSeconds = 30.0
    create_timeout_seconds: PositiveSeconds = 120.0
    timer_sweep_seconds: PositiveSeconds = 30.0
    # A timer fires only once every input partition is applied past its
    # deadline (input_watermarks). A partition whose watermark has not moved
    # for this long (its owner is gone or stuck; counted from the daemon's
    # start at the earliest) is no longer waited for, and timers fired past it
    # are logged `timer_fired_without_watermark`. Keep it above the time the
    # group takes to hand a dead member's partitions over (about twice
    # kafka_session_timeout_ms, plus the catch-up).
    timer_watermark_max_lag_seconds: PositiveSeconds = 60.0
    outbox_sweep_seconds: PositiveSeconds = 5.0

    # Input handling.
    max_record_bytes: int = Field(1_048_576, ge=1024)
    batch_max_records: int = Field(1000, ge=1, le=100_000)
    inbox_retention_hours: PositiveSeconds = 168.0
    # Retention of what dashboards and `show` read (storage.retention): answered
    # calls, transitions of chats that ended (failed or none), and facts
    # (agents, jobs) of workspaces no chat is bound to.
    tool_call_retention_hours: PositiveSeconds = 720.0
    history_retention_hours: PositiveSeconds = 720.0
    facts_retention_hours: PositiveSeconds = 168.0
    database_pool_size: int = Field(8, ge=2, le=200)
    # SIGTERM: work still running this long after the stop is cancelled (its
    # offsets stay uncommitted, so it is done again by whoever reads next).
    shutdown_grace_seconds: PositiveSeconds = 10.0

    # The Coder bridge (`workspaced bridge`). The token is a secret: never logged.
    coder_url: str | None = None
    coder_session_token: SecretStr | None = None
    coder_ca_file: Path | None = None
    coder_tls_verify: bool = True
    coder_request_timeout_seconds: PositiveSeconds = 30.0
    bridge_consumer_group: str | None = None  # default: <consumer_group>-bridge
    # Coder's watch speaks on agent connect/disconnect, not on every agent
    # heartbeat: the bridge repeats a connected agent's heartbeat this often.
    agent_heartbeat_interval_seconds: PositiveSeconds = 10.0
    bridge_lease_seconds: PositiveSeconds = 15.0
    bridge_max_watches: int = Field(20_000, ge=1, le=1_000_000)
    # Coder's chat tools wait for the agent's startup scripts (lifecycle
    # `ready`) after it connects; off keeps answering at the first heartbeat.
    wait_for_startup_scripts: bool = False
    startup_script_timeout_seconds: PositiveSeconds = 600.0

    # /metrics, /healthz and /readyz (docs/operations.md); empty turns it off.
    metrics_address: str = "127.0.0.1:9464"
    bridge_metrics_address: str = "127.0.0.1:9465"

    # Logs.
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _servers_have_ports(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",") if s.strip()]
        if not servers:
            raise ValueError("must name at least one host:port")
        for server in servers:
            host, _, port = server.rpartition(":")
            if not host or not port.isdigit():
                msg = f"{server!r} is not host:port"
                raise ValueError(msg)
        return ",".join(servers)

    @field_validator("metrics_address", "bridge_metrics_address")
    @classmethod
    def _address_or_off(cls, value: str) -> str:
        if value:
            host, _, port = value.rpartition(":")
            if not host or not port.isdigit() or int(port) > 65535:
                raise ValueError("must be host:port (e.g. 127.0.0.1:9464), or empty for off")
        return value

    @field_validator("coder_url")
    @classmethod
    def _coder_url_is_http(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials; use coder_session_token")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _heartbeats_beat_the_inactivity_timeout(self) -> Settings:
        # Only the bridge beats: a daemon alone may use any inactivity timeout.
        if (
            self.coder_url is not None
            and self.agent_heartbeat_interval_seconds >= self.agent_inactivity_timeout_seconds
        ):
            msg = (
                "agent_heartbeat_interval_seconds must be below "
                "agent_inactivity_timeout_seconds, or connected agents look gone (R6)"
            )
            raise ValueError(msg)
        return self

    def bridge_group(self) -> str:
        """
        Return the bridge's consumer group.
        """
        return self.bridge_consumer_group or f"{self.consumer_group}-bridge"

    @field_validator("database_url")
    @classmethod
    def _url_is_postgres(cls, value: SecretStr) -> SecretStr:
        # Python's own URL errors quote the text they choke on, which may be
        # the password: every message here is our own.
        try:
            parts = urlsplit(value.get_secret_value())
            port = parts.port
        except ValueError:
            port, parts = None, None
        unencoded = parts is not None and "@" in parts.path + parts.query + parts.fragment
        if parts is None or parts.scheme not in {"postgres", "postgresql"} or unencoded:
            msg = (
                "must be a postgresql:// URL with a numeric port, if any; "
                "percent-encode '/', '?', '#' and '@' in the password"
            )
            raise ValueError(msg)
        del port
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_legal(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not set(value) <= allowed:
            raise ValueError("may contain only letters, digits, '.', '_' and '-'")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """
        Read environment, then the ``--config`` file, then ``config/*.toml``.
        """
        extra = settings_cls.model_config.get("toml_file")
        files = _config_files() + ([Path(str(extra))] if extra else [])
        return (
            env_settings,
            init_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=files),
        )

    def topic(self, name: str) -> str:
        """
        Return the full name of a topic, prefix included.
        """
        return self.topic_prefix + kafka.TOPICS[name]

    def kafka_config(self, group_id: str | None = None) -> kafka.KafkaConfig:
        """
        Return what the Kafka adapters need, for the daemon's group or ``group_id``.
        """
        password = self.kafka_sasl_password
        return kafka.KafkaConfig(
            bootstrap_servers=self.kafka_bootstrap_servers,
            group_id=group_id or self.consumer_group,
            topic_prefix=self.topic_prefix,
            security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=password.get_secret_value() if password else None,
            ssl_cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None,
            session_timeout_ms=self.kafka_session_timeout_ms,
            heartbeat_interval_ms=self.kafka_heartbeat_interval_ms,
            fetch_max_wait_ms=self.kafka_fetch_max_wait_ms,
            max_record_bytes=self.max_record_bytes,
            topic_partitions=self.topic_partitions,
            topic_replication_factor=self.topic_replication_factor,
        )

    def environment(self) -> dict[str, str]:
        """
        Return the ``WORKSPACED_*`` variables that give a child process these settings.

        Secrets are included: pass the result to a child's environment, never to a log.
        """
        found = {}
        for name, value in self:
            if value is None:
                continue
            text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
            found[f"WORKSPACED_{name.upper()}"] = text
        return found

    def safe_database_url(self) -> str:
        """
        Return the database URL with any password replaced by ``***``.
        """
        return redact_url(self.database_url.get_secret_value())


def redact_url(url: str) -> str:
    """
    Replace the password of a URL by ``***`` so it can be logged.
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = "&".join(
        f"{k}=***" if k.lower() in {"password", "sslpassword"} else f"{k}={v}" if sep else k
        for k, sep, v in (p.partition("=") for p in parts.query.split("&") if p)
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


class _ExplicitSettings(Settings):
    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],  # noqa: ARG003
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,  # noqa: ARG003
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def explicit(**values: Any) -> Settings:
    """
    Build settings from ``values`` and the defaults alone: no environment, no TOML file.

    Tests, benchmarks and ``dev`` use it for settings they have already decided,
    so a ``WORKSPACED_DATABASE_URL`` exported in the shell can never point a
    test daemon at a real database.
    """
    try:
        return _ExplicitSettings(**values)
    except ValidationError as exc:
        raise SettingsError(describe(exc)) from None


def _config_files() -> list[Path]:
    folder = Path(os.environ.get("WORKSPACED_CONFIG_DIR", "config"))
    # TomlConfigSettingsSource merges later files over earlier ones.
    return sorted(folder.glob("*.toml")) if folder.is_dir() else []


def load(config_file: Path | None = None, **overrides: Any) -> Settings:
    """
    Build the settings, or raise ``SettingsError`` naming every bad setting.
    """
    cls: type[Settings] = Settings
    if config_file is not None:
        if not config_file.is_file():
            msg = f"invalid settings: --config {config_file}: no such file"
            raise SettingsError(msg)
        # A subclass that names the file, so no module state carries it.
        config = SettingsConfigDict(**{**Settings.model_config, "toml_file": config_file})
        cls = type("Settings", (Settings,), {"model_config": config})
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe(exc)) from None
    except ValueError as exc:  # a TOML file that does not parse
        msg = f"invalid settings: {exc}"
        raise SettingsError(msg) from None


def describe(exc: ValidationError) -> str:
    """
    Name each bad setting with its variable; never echo the bad value (it may be a secret).
    """
    lines = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"])
        if not name:  # a rule between settings: its message names them
            lines.append(f"  {error['msg'].removeprefix('Value error, ')}")
            continue
        variable = f"WORKSPACED_{name.upper()}"
        lines.append(f"  {name} ({variable}): {error['msg']}")
    return "invalid settings:\n" + "\n".join(lines)
