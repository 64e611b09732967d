from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import structlog

from telemetry import logs
from workspaced import settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(__import__("os").environ):
        if name.startswith("WORKSPACED_"):
            monkeypatch.delenv(name)
    folder = tmp_path / "config"
    folder.mkdir()
    monkeypatch.setenv("WORKSPACED_CONFIG_DIR", str(folder))
    return folder


def test_later_sources_win_defaults_then_config_folder_then_config_file_then_environment(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert settings.load().build_timeout_seconds == 600
    (clean_env / "a.toml").write_text(
        "build_timeout_seconds = 300\nagent_connect_timeout_seconds = 60\n"
    )
    (clean_env / "b.toml").write_text("build_timeout_seconds = 200\n")
    assert settings.load().build_timeout_seconds == 200
    extra = tmp_path / "extra.toml"
    extra.write_text("build_timeout_seconds = 100\ntopic_prefix = 'p.'\n")
    conf = settings.load(extra)
    assert (conf.build_timeout_seconds, conf.agent_connect_timeout_seconds) == (100, 60)
    monkeypatch.setenv("WORKSPACED_BUILD_TIMEOUT_SECONDS", "50")
    monkeypatch.setenv("WORKSPACED_TOPIC_PREFIX", "env.")
    conf = settings.load(extra)
    assert conf.build_timeout_seconds == 50
    assert conf.topic("tool_calls") == "env.chat.tool_calls"


def test_every_variable_of_the_spec_is_read(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = {
        "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9093",
        "DATABASE_URL": "postgresql://u:p@db:5432/w",
        "TOPIC_PREFIX": "x.",
        "CONSUMER_GROUP": "grp",
        "BUILD_TIMEOUT_SECONDS": "11",
        "AGENT_CONNECT_TIMEOUT_SECONDS": "12",
        "AGENT_INACTIVITY_TIMEOUT_SECONDS": "13",
    }
    for key, value in values.items():
        monkeypatch.setenv(f"WORKSPACED_{key}", value)
    conf = settings.load()
    assert conf.kafka_bootstrap_servers == "k1:9092,k2:9093"
    assert conf.database_url.get_secret_value() == "postgresql://u:p@db:5432/w"
    assert conf.safe_database_url() == "postgresql://u:***@db:5432/w"
    assert (conf.topic_prefix, conf.consumer_group) == ("x.", "grp")
    assert (
        conf.build_timeout_seconds,
        conf.agent_connect_timeout_seconds,
        conf.agent_inactivity_timeout_seconds,
    ) == (11, 12, 13)


def test_bad_settings_are_all_named_at_once_without_their_values(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKSPACED_BUILD_TIMEOUT_SECONDS", "soon")
    monkeypatch.setenv("WORKSPACED_DATABASE_URL", "mysql://root:s3cret@db/w")
    monkeypatch.setenv("WORKSPACED_KAFKA_SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("WORKSPACED_KAFKA_SECURITY_PROTOCOL", "TLS")
    with pytest.raises(settings.SettingsError) as caught:
        settings.load()
    message = str(caught.value)
    for name in ("build_timeout_seconds", "database_url", "kafka_security_protocol"):
        assert f"{name} (WORKSPACED_{name.upper()})" in message
    assert "s3cret" not in message


def test_a_missing_config_file_is_a_clear_error(clean_env: Path, tmp_path: Path) -> None:
    with pytest.raises(settings.SettingsError, match="no such file"):
        settings.load(tmp_path / "nope.toml")


def test_logs_are_json_lines_off_a_terminal_and_standard_library_logs_share_the_pipeline() -> None:
    out = io.StringIO()
    logs.configure("info", "auto", stream=out)
    try:
        logs.get("t").info("transition_applied", chat_id="c1", from_state="none")
        logging.getLogger("somelib").warning("plain %s", "message")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["event"] == "transition_applied"
    assert lines[0]["chat_id"] == "c1"
    assert lines[1]["event"] == "plain message"
    assert lines[1]["logger"] == "somelib"
    assert {"timestamp", "level"} <= set(lines[1])


def test_settings_given_to_a_child_process_through_the_environment_read_back_the_same(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = settings.Settings(
        database_url="postgresql://u:pw@db/w", build_timeout_seconds=7.5, topic_prefix="x."
    )
    for name, value in conf.environment().items():
        monkeypatch.setenv(name, value)
    assert settings.load() == conf


def test_fixture_settings_ignore_workspaced_variables_exported_in_the_shell(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Defect 7: with WORKSPACED_DATABASE_URL exported (as the README shows), a
    # test daemon once wrote into that database and joined its relay election.
    from tests.conftest import Services, make_settings  # noqa: PLC0415

    monkeypatch.setenv("WORKSPACED_DATABASE_URL", "postgresql://prod@db.example/workspaced")
    monkeypatch.setenv("WORKSPACED_KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9092")
    monkeypatch.setenv("WORKSPACED_CONSUMER_GROUP", "production")
    monkeypatch.setenv("WORKSPACED_TOPIC_PREFIX", "prod.")
    services = Services("postgresql://postgres@127.0.0.1:1/postgres", "127.0.0.1:2", "tansu")
    conf = make_settings(services, "postgresql://postgres@127.0.0.1:1/test_x")
    assert conf.database_url.get_secret_value() == "postgresql://postgres@127.0.0.1:1/test_x"
    assert conf.kafka_bootstrap_servers == "127.0.0.1:2"
    assert conf.consumer_group != "production"
    assert conf.topic_prefix.startswith("t")


@pytest.mark.parametrize("separator", ["?", "/", "#"])
def test_a_database_password_left_unencoded_is_refused_without_being_echoed(
    separator: str,
) -> None:
    url = f"postgresql://u:pa{separator}SECRETx@127.0.0.1:5432/db"
    with pytest.raises(settings.SettingsError) as caught:
        settings.explicit(database_url=url)
    assert "SECRET" not in str(caught.value)
    assert "percent-encode" in str(caught.value)
