"""
Decode and validate request bodies as coderd does: Go's JSON decoder, then go-playground tags.

``httpapi.Read`` (coderd/httpapi/httpapi.go) answers 400 "Request body must be
valid JSON." with the decoder's error, then 400 "Validation failed." with one
validation per failing tag, in struct field order. The tags are those of
codersdk/organizations.go ``CreateWorkspaceRequest`` and
codersdk/workspaces.go ``CreateWorkspaceBuildRequest``. Decoder error texts
follow Go's (``json: cannot unmarshal number into Go struct field ...``); the
syntax-error text is Python's, which Coder's clients do not parse.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from devtools.fake_coder import wire

_ZERO_UUID = "00000000-0000-0000-0000-000000000000"
_JSON_KINDS = {str: "string", bool: "bool", int: "number", float: "number"}


@dataclass(frozen=True, slots=True)
class CreateWorkspace:
    """
    Carry the fields of ``CreateWorkspaceRequest`` the fake uses.
    """

    template_id: uuid.UUID | None
    template_version_id: uuid.UUID | None
    name: str
    ttl_ms: int | None
    automatic_updates: str
    rich_parameter_values: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class CreateBuild:
    """
    Carry the fields of ``CreateWorkspaceBuildRequest`` the fake uses.
    """

    transition: str
    template_version_id: uuid.UUID | None
    orphan: bool
    log_level: str


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return _JSON_KINDS.get(type(value), "value")


def _invalid(detail: str) -> wire.Refusal:
    return wire.Refusal(wire.respond(400, wire.INVALID_JSON, detail=detail))


class _Fields:
    """
    Read typed fields out of a decoded JSON object with Go's error texts.
    """

    def __init__(self, body: Any, struct: str) -> None:
        if not isinstance(body, dict):
            msg = f"json: cannot unmarshal {_kind(body)} into Go value of type codersdk.{struct}"
            raise _invalid(msg)
        self._body = body
        self._struct = struct

    def _mismatch(self, key: str, value: Any, go_type: str) -> wire.Refusal:
        return _invalid(
            f"json: cannot unmarshal {_kind(value)} into Go struct field "
            f"{self._struct}.{key} of type {go_type}"
        )

    def string(self, key: str) -> str:
        value = self._body.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self._mismatch(key, value, "string")
        return value

    def boolean(self, key: str) -> bool:
        value = self._body.get(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self._mismatch(key, value, "bool")
        return value

    def integer(self, key: str) -> int | None:
        value = self._body.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._mismatch(key, value, "int64")
        return value

    def uid(self, key: str) -> uuid.UUID | None:
        value = self._body.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._mismatch(key, value, "uuid.UUID")
        parsed, error = wire.parse_uuid(value)
        if parsed is None:
            raise _invalid(error)
        return None if parsed.int == 0 else parsed

    def parameters(self, key: str) -> tuple[tuple[str, str], ...]:
        value = self._body.get(key)
        if value is None:
            return ()
        go_type = "[]codersdk.WorkspaceBuildParameter"
        if not isinstance(value, list):
            raise self._mismatch(key, value, go_type)
        pairs = []
        for item in value:
            if not isinstance(item, dict):
                raise self._mismatch(key, item, go_type)
            name, text = item.get("name", ""), item.get("value", "")
            if not isinstance(name, str) or not isinstance(text, str):
                raise self._mismatch(key, item, "string")
            pairs.append((name, text))
        return tuple(pairs)


async def _json(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        detail = "EOF" if not raw.strip() else str(exc)
        raise _invalid(detail) from exc


def _failed(validations: list[tuple[str, str]]) -> wire.Refusal:
    return wire.Refusal(wire.respond(400, wire.VALIDATION_FAILED, validations=validations))


async def create_workspace(request: web.Request) -> CreateWorkspace:
    """
    Decode and validate a ``CreateWorkspaceRequest`` body, or raise Coder's answer.
    """
    fields = _Fields(await _json(request), "CreateWorkspaceRequest")
    body = CreateWorkspace(
        template_id=fields.uid("template_id"),
        template_version_id=fields.uid("template_version_id"),
        name=fields.string("name"),
        ttl_ms=fields.integer("ttl_ms"),
        automatic_updates=fields.string("automatic_updates"),
        rich_parameter_values=fields.parameters("rich_parameter_values"),
    )
    problems: list[tuple[str, str]] = []
    tid, tvid = body.template_id, body.template_version_id
    # validate:"required_without=TemplateVersionID,excluded_with=TemplateVersionID" (and mirrored)
    if tid is None and tvid is None:
        problems.append(("template_id", wire.validation_detail("required_without", _ZERO_UUID)))
        problems.append(
            ("template_version_id", wire.validation_detail("required_without", _ZERO_UUID))
        )
    elif tid is not None and tvid is not None:
        problems.append(("template_id", wire.validation_detail("excluded_with", tid)))
        problems.append(("template_version_id", wire.validation_detail("excluded_with", tvid)))
    # validate:"workspace_name,required": the name tag runs first, so "" fails it too.
    if wire.name_error(body.name) is not None:
        problems.append(("name", wire.validation_detail("workspace_name", body.name)))
    if problems:
        raise _failed(problems)
    return body


async def create_build(request: web.Request) -> CreateBuild:
    """
    Decode and validate a ``CreateWorkspaceBuildRequest`` body, or raise Coder's answer.
    """
    fields = _Fields(await _json(request), "CreateWorkspaceBuildRequest")
    body = CreateBuild(
        transition=fields.string("transition"),
        template_version_id=fields.uid("template_version_id"),
        orphan=fields.boolean("orphan"),
        log_level=fields.string("log_level"),
    )
    problems: list[tuple[str, str]] = []
    # Its tags: one of start, stop or delete, and required.
    if body.transition not in {"start", "stop", "delete"}:
        problems.append(("transition", wire.validation_detail("oneof", body.transition)))
    # Its tags: empty, or debug.
    if body.log_level not in {"", "debug"}:
        problems.append(("log_level", wire.validation_detail("oneof", body.log_level)))
    if problems:
        raise _failed(problems)
    return body


def rejected_name(name: str) -> wire.Refusal:
    """
    Return the answer Coder gives when the validator refuses ``name`` (the ``reject`` word).
    """
    return _failed([("name", wire.validation_detail("workspace_name", name))])
