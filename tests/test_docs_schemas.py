from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest

from consumers import schemas
from workspaced import settings

DOCS = Path(__file__).resolve().parent.parent / "docs"
SCHEMA_DIR = DOCS / "schemas"
ASYNCAPI = DOCS / "asyncapi.yaml"

CHAT = "7d3c1b9e-2f4a-4c55-9a8e-1f2d3c4b5a69"
OWNER = "0e6b4f7a-1c2d-4e3f-8a9b-0c1d2e3f4a5b"
TEMPLATE = "3f2e1d0c-9b8a-4765-8432-10fedcba9876"
COMMAND = "5b8e0a61-3c2f-4d1e-9a7b-6c5d4e3f2a1b"
WORKSPACE = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
BUILD = "2b3c4d5e-6f7a-4b8c-9d0e-1f2a3b4c5d6e"
JOB = "3c4d5e6f-7a8b-4c9d-8e1f-2a3b4c5d6e7f"
AGENT = "4d5e6f7a-8b9c-4d0e-9f2a-3b4c5d6e7f8a"
NOW = "2025-01-31T12:00:00.123456Z"


def _generator() -> ModuleType:
    path = DOCS / "generate_schemas.py"
    spec = importlib.util.spec_from_file_location("generate_schemas", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _workspace_event(to_state: str, trigger: str, **extra: Any) -> dict[str, Any]:
    return {
        "chat_id": CHAT,
        "from_state": "agent_waiting",
        "to_state": to_state,
        "trigger": trigger,
        "workspace_id": WORKSPACE,
        "workspace_name": "alice/dev-1a2b",
        "agent_id": AGENT,
        "reason": None,
        "version": 4,
        "occurred_at": NOW,
        **extra,
    }


# Realistic records of every event type, several per type where optional
# fields or variants matter.
EXAMPLES: dict[str, list[dict[str, Any]]] = {
    "chat.tool_call.v1": [
        {
            "tool_call_id": "call_01HQ3Z",
            "chat_id": CHAT,
            "owner_id": OWNER,
            "tool": "create_workspace",
            "arguments": {
                "template_id": TEMPLATE,
                "name": "dev",
                "parameters": {"region": "eu-west", "cpu": "4"},
            },
            "template_name": "docker",
        },
        {
            "tool_call_id": "call_02",
            "chat_id": CHAT,
            "owner_id": OWNER,
            "tool": "create_workspace",
            "arguments": {"template_id": TEMPLATE},
        },
        {
            "tool_call_id": "call_03",
            "chat_id": CHAT,
            "owner_id": OWNER,
            "tool": "create_workspace",
            "arguments": {"template_id": TEMPLATE, "name": None, "parameters": None},
            "template_name": None,
        },
        {
            "tool_call_id": "call_05",
            "chat_id": CHAT,
            "owner_id": OWNER,
            "tool": "stop_workspace",
            "arguments": {},
        },
        {"tool_call_id": "call_06", "chat_id": CHAT, "owner_id": OWNER, "tool": "start_workspace"},
    ],
    "chat.tool_result.v1": [
        {
            "tool_call_id": "call_01HQ3Z",
            "chat_id": CHAT,
            "tool": "create_workspace",
            "is_error": False,
            "content": {"created": True, "workspace_name": "alice/dev-1a2b"},
        },
        {
            "tool_call_id": "call_02",
            "chat_id": CHAT,
            "tool": "create_workspace",
            "is_error": False,
            "content": {
                "created": False,
                "workspace_name": "alice/dev-1a2b",
                "status": "already_exists",
                "message": "workspace was already being built and is now ready",
            },
        },
        {
            "tool_call_id": "call_04",
            "chat_id": CHAT,
            "tool": "create_workspace",
            "is_error": True,
            "content": {"error": "template_id is required; use list_templates to find one"},
        },
        {
            "tool_call_id": "call_05",
            "chat_id": CHAT,
            "tool": "stop_workspace",
            "is_error": False,
            "content": {"stopped": True, "workspace_name": "alice/dev-1a2b", "build_id": BUILD},
        },
        {
            "tool_call_id": "call_06",
            "chat_id": CHAT,
            "tool": "start_workspace",
            "is_error": False,
            "content": {"started": True, "workspace_name": "alice/dev-1a2b", "no_build": True},
        },
    ],
    "chat.workspace.state_changed.v1": [
        _workspace_event("ready", "agent_connected"),
        {
            "chat_id": CHAT,
            "from_state": "none",
            "to_state": "creating",
            "trigger": "tool_call",
            "version": 1,
            "occurred_at": NOW,
        },
    ],
    "chat.workspace.ready.v1": [_workspace_event("ready", "agent_connected")],
    "chat.workspace.failed.v1": [
        _workspace_event(
            "failed", "build_timed_out", reason="timed out waiting for workspace build"
        ),
    ],
    "coder.workspace.create.v1": [
        {
            "command_id": COMMAND,
            "chat_id": CHAT,
            "owner_id": OWNER,
            "template_id": TEMPLATE,
            "name": "dev",
            "rich_parameter_values": [
                {"name": "cpu", "value": "4"},
                {"name": "region", "value": "eu-west"},
            ],
        },
        {
            "command_id": COMMAND,
            "chat_id": CHAT,
            "owner_id": OWNER,
            "template_id": TEMPLATE,
            "name": "docker-3f9a",
            "rich_parameter_values": [],
        },
    ],
    "coder.workspace.created.v1": [
        {
            "command_id": COMMAND,
            "chat_id": CHAT,
            "workspace_id": WORKSPACE,
            "workspace_name": "dev",
            "owner_name": "alice",
            "build_id": BUILD,
            "job_id": JOB,
        },
    ],
    "coder.workspace.create_failed.v1": [
        {
            "command_id": COMMAND,
            "chat_id": CHAT,
            "status_code": 400,
            "message": "Invalid workspace name",
            "detail": "name is taken",
            "validations": [{"field": "name", "detail": "This value is already in use."}],
        },
        {"command_id": COMMAND, "chat_id": CHAT, "message": "Internal error."},
    ],
    "coder.workspace.build.v1": [
        {"command_id": COMMAND, "chat_id": CHAT, "workspace_id": WORKSPACE, "transition": "stop"},
    ],
    "coder.workspace.build_queued.v1": [
        {
            "command_id": COMMAND,
            "chat_id": CHAT,
            "workspace_id": WORKSPACE,
            "transition": "start",
            "build_id": BUILD,
            "job_id": JOB,
        },
    ],
    "coder.workspace.build_rejected.v1": [
        {
            "command_id": COMMAND,
            "chat_id": CHAT,
            "status_code": 409,
            "message": "A workspace build is already active.",
            "detail": "A workspace build is already active.",
        },
        {"command_id": COMMAND, "chat_id": CHAT, "message": "Forbidden."},
    ],
    "coder.provisioner_job.updated.v1": [
        {
            "job_id": JOB,
            "workspace_id": WORKSPACE,
            "build_id": BUILD,
            "transition": "start",
            "status": "succeeded",
            "agents": [{"id": AGENT, "name": "main"}],
            "occurred_at": NOW,
        },
        {
            "job_id": JOB,
            "workspace_id": WORKSPACE,
            "build_id": BUILD,
            "transition": "start",
            "status": "failed",
            "error": "terraform apply: exit status 1",
            "agents": None,
            "occurred_at": "2025-01-31T12:00:05+01:00",
        },
    ],
    "coder.agent.heartbeat.v1": [
        {
            "agent_id": AGENT,
            "workspace_id": WORKSPACE,
            "lifecycle_state": "ready",
            "occurred_at": NOW,
        },
        {"agent_id": AGENT, "workspace_id": WORKSPACE, "occurred_at": NOW},
    ],
}

# Records that break the contract, one per type: each must fail validation.
INVALID: dict[str, dict[str, Any]] = {
    "chat.tool_call.v1": {**EXAMPLES["chat.tool_call.v1"][0], "tool_call_id": ""},
    "chat.tool_result.v1": {**EXAMPLES["chat.tool_result.v1"][0], "is_error": "no"},
    "chat.workspace.state_changed.v1": {
        k: v for k, v in _workspace_event("ready", "agent_connected").items() if k != "version"
    },
    "chat.workspace.ready.v1": {**_workspace_event("ready", "agent_connected"), "chat_id": 7},
    "chat.workspace.failed.v1": {**_workspace_event("failed", "build_failed"), "reason": 1},
    "coder.workspace.create.v1": {
        **EXAMPLES["coder.workspace.create.v1"][0],
        "rich_parameter_values": [{"name": "cpu"}],
    },
    "coder.workspace.created.v1": {**EXAMPLES["coder.workspace.created.v1"][0], "owner_name": ""},
    "coder.workspace.create_failed.v1": {"command_id": COMMAND, "chat_id": CHAT},
    "coder.workspace.build.v1": {
        **EXAMPLES["coder.workspace.build.v1"][0],
        "transition": "delete",
    },
    "coder.workspace.build_queued.v1": {
        **EXAMPLES["coder.workspace.build_queued.v1"][0],
        "job_id": "job-1",
    },
    "coder.workspace.build_rejected.v1": {"command_id": COMMAND, "chat_id": CHAT, "message": ""},
    "coder.provisioner_job.updated.v1": {
        **EXAMPLES["coder.provisioner_job.updated.v1"][0],
        "status": "done",
    },
    "coder.agent.heartbeat.v1": {"agent_id": AGENT, "occurred_at": NOW},
}


def _validator(event_type: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMA_DIR / f"{event_type}.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def test_the_committed_schema_files_match_what_the_generator_writes_now() -> None:
    expected = _generator().render()
    committed = {path.name: path.read_text(encoding="utf-8") for path in SCHEMA_DIR.glob("*.json")}
    assert sorted(committed) == sorted(expected), (
        "docs/schemas has missing or extra files: run `.venv/bin/python docs/generate_schemas.py`"
    )
    for name, text in expected.items():
        assert committed[name] == text, (
            f"docs/schemas/{name} is stale: run `.venv/bin/python docs/generate_schemas.py`"
        )


def test_the_generator_gives_the_same_text_on_every_run() -> None:
    generator = _generator()
    assert generator.render() == generator.render()


def test_there_is_one_schema_file_per_event_type() -> None:
    assert {p.stem for p in SCHEMA_DIR.glob("*.json")} == set(schemas.EVENT_TYPES)


@pytest.mark.parametrize("event_type", sorted(schemas.EVENT_TYPES))
def test_each_schema_is_a_draft_2020_12_schema_named_after_its_event_type(
    event_type: str,
) -> None:
    schema = json.loads((SCHEMA_DIR / f"{event_type}.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == event_type
    assert schema["title"] == event_type
    jsonschema.Draft202012Validator.check_schema(schema)


def test_the_asyncapi_document_names_every_event_type_and_every_topic() -> None:
    # PyYAML is not a dependency of the project, so the document is checked as text.
    text = ASYNCAPI.read_text(encoding="utf-8")
    assert re.search(r"^asyncapi: 3\.0\.0$", text, re.MULTILINE)
    for event_type in schemas.EVENT_TYPES:
        assert f"name: {event_type}\n" in text, event_type
        assert f"./schemas/{event_type}.json" in text, event_type
    defaults = settings.Settings.model_construct(topic_prefix="")
    for name in settings.TOPIC_NAMES:
        assert f"address: {defaults.topic(name)}\n" in text, name
    assert "WORKSPACED_TOPIC_PREFIX" in text


def test_the_asyncapi_document_describes_the_cloudevents_and_dead_letter_headers() -> None:
    text = ASYNCAPI.read_text(encoding="utf-8")
    for header in ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "content-type"):
        assert f"        {header}:\n" in text, header
    for header in ("dlq_reason", "dlq_topic", "dlq_partition", "dlq_offset"):
        assert f"        {header}:\n" in text, header
    assert text.count("action: send") == 4
    assert text.count("action: receive") == 4


def test_the_asyncapi_document_references_only_existing_schema_files() -> None:
    text = ASYNCAPI.read_text(encoding="utf-8")
    external = re.findall(r"\$ref:\s*'?(\./[^'\s]+)'?", text)
    assert external
    for ref in external:
        assert (DOCS / ref).is_file(), f"{ref} does not exist"


def _block(lines: list[str], start: int, end: int, indent: str, key: str) -> tuple[int, int]:
    """Return the lines (first, past-last) of the mapping under ``key`` within [start, end)."""
    for i in range(start, end):
        if lines[i] == f"{indent}{key}:":
            stop = i + 1
            while stop < end and (not lines[stop].strip() or lines[stop].startswith(indent + " ")):
                stop += 1
            return i + 1, stop
    msg = f"{indent}{key}: not found"
    raise LookupError(msg)


def test_the_asyncapi_document_resolves_every_local_reference() -> None:
    lines = ASYNCAPI.read_text(encoding="utf-8").splitlines()
    local = set(re.findall(r"\$ref:\s*'#/([^']+)'", "\n".join(lines)))
    assert local
    for ref in local:
        start, end, indent = 0, len(lines), ""
        for part in ref.split("/"):
            try:
                start, end = _block(lines, start, end, indent, part)
            except LookupError:
                pytest.fail(f"#/{ref} does not resolve")
            indent += "  "


def test_every_event_type_has_examples() -> None:
    assert set(EXAMPLES) == set(schemas.EVENT_TYPES)
    assert set(INVALID) == set(schemas.EVENT_TYPES)


@pytest.mark.parametrize(
    ("event_type", "record"),
    [(t, r) for t, records in sorted(EXAMPLES.items()) for r in records],
)
def test_an_example_record_validates_against_its_schema(
    event_type: str, record: dict[str, Any]
) -> None:
    _validator(event_type).validate(record)


@pytest.mark.parametrize(
    ("event_type", "record"),
    [(t, r) for t, records in sorted(EXAMPLES.items()) for r in records],
)
def test_the_daemon_accepts_every_record_the_schema_accepts(
    event_type: str, record: dict[str, Any]
) -> None:
    schemas.EVENT_TYPES[event_type].model_validate(record)


@pytest.mark.parametrize(("event_type", "record"), sorted(INVALID.items()))
def test_a_record_breaking_the_contract_fails_its_schema(
    event_type: str, record: dict[str, Any]
) -> None:
    assert list(_validator(event_type).iter_errors(record))


def test_a_chat_id_that_is_not_a_uuid_fails_the_schema() -> None:
    record = {**EXAMPLES["chat.tool_call.v1"][0], "chat_id": "chat-1"}
    assert list(_validator("chat.tool_call.v1").iter_errors(record))
