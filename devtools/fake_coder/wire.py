"""
Write Coder's wire format: Go's JSON encoding, the ``codersdk.Response`` envelope, the texts.

Every message below is copied from Coder's source (coder/coder); the file it
comes from is named next to it, so a change upstream can be checked quickly.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from aiohttp import web

JSON_CONTENT_TYPE = "application/json; charset=utf-8"  # coderd/httpapi/httpapi.go Write

# coderd/httpmw/apikey.go
SIGNED_OUT = "You are signed out or your session has expired. Please sign in again to continue."
# codersdk/client.go SessionTokenCookie, SessionTokenHeader
SESSION_COOKIE = "coder_session_token"
SESSION_HEADER = "Coder-Session-Token"
# coderd/httpapi/httpapi.go ResourceNotFoundResponse, RouteNotFound, InternalServerError, Read
RESOURCE_NOT_FOUND = "Resource not found or you do not have access to this resource"
ROUTE_NOT_FOUND = "Route not found."
INTERNAL_ERROR = "An internal server error occurred."
VALIDATION_FAILED = "Validation failed."
INVALID_JSON = "Request body must be valid JSON."
# coderd/httpmw/userparam.go userErrorMessage
USER_NOT_FOUND = '"user" must be an existing uuid or username.'
# coderd/wsbuilder/wsbuilder.go checkRunningBuild
BUILD_ACTIVE = "A workspace build is already active."
# coderd/httpapi/httpapi.go OneWayWebSocketEventSender
ONE_WAY_CLOSE_REASON = "Clients cannot send messages for one-way WebSockets"

# Go's json.Encoder with SetEscapeHTML(true) (coderd/httpapi.Write) escapes these.
_GO_ESCAPES = (
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)
# codersdk/name.go UsernameValidRegex
_NAME_RE = re.compile(r"^[a-zA-Z0-9]+(?:-[a-zA-Z0-9]+)*$")
_NAME_MAX_LEN = 32
# strconv.ParseBool
_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
# github.com/google/uuid Parse: plain, braced, urn:uuid: and 32 hex digits
_UUID_LENGTHS = frozenset({32, 36, 38, 45})


class Refusal(Exception):  # noqa: N818 - a control-flow signal, not an error
    """
    Raise to answer the request with ``response`` (Coder's error answer) instead.
    """

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def go_json(value: Any) -> bytes:
    """
    Encode ``value`` as Go's ``json.Encoder`` does in ``httpapi.Write``, trailing newline included.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for raw, escaped in _GO_ESCAPES:
        text = text.replace(raw, escaped)
    return (text + "\n").encode()


def write(status: int, value: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    """
    Answer ``status`` with ``value`` as JSON, as ``httpapi.Write`` does.
    """
    all_headers = {"Content-Type": JSON_CONTENT_TYPE, **(headers or {})}
    return web.Response(status=status, body=go_json(value), headers=all_headers)


def respond(
    status: int,
    message: str,
    *,
    detail: str = "",
    validations: Iterable[tuple[str, str]] = (),
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """
    Answer with a ``codersdk.Response``; ``detail`` and ``validations`` are omitempty.
    """
    body: dict[str, Any] = {"message": message}
    if detail:
        body["detail"] = detail
    fields = [{"field": field, "detail": text} for field, text in validations]
    if fields:
        body["validations"] = fields
    return write(status, body, headers)


def validation_detail(tag: str, value: object) -> str:
    """
    Return go-playground's failure text as ``httpapi.Read`` formats it.
    """
    return f'Validation failed for tag "{tag}" with value: "{value}"'


def name_error(name: str) -> str | None:
    """
    Return why ``name`` is not a valid Coder name, as ``codersdk.NameValid`` says, or None.
    """
    if len(name.encode()) > _NAME_MAX_LEN:
        return "must be <= 32 characters"
    if not name:
        return "must be >= 1 character"
    if name in {"new", "create"}:
        return f'cannot use "{name}" as a name'
    if not _NAME_RE.match(name):
        return "must be alphanumeric with hyphens"
    return None


def parse_go_bool(text: str) -> bool | None:
    """
    Parse ``text`` as Go's ``strconv.ParseBool`` does; None when it would fail.
    """
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    return None


def parse_uuid(text: str) -> tuple[uuid.UUID | None, str]:
    """
    Parse ``text`` as ``uuid.Parse``; on failure return None and its error text.
    """
    if len(text) not in _UUID_LENGTHS:
        return None, f"invalid UUID length: {len(text)}"
    try:
        return uuid.UUID(text), ""
    except ValueError:
        return None, "invalid UUID format"


def rfc3339(moment: datetime | None) -> str | None:
    """
    Format ``moment`` as Go's ``time.Time`` JSON (RFC 3339, trailing zeros dropped, UTC ``Z``).
    """
    if moment is None:
        return None
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    return f"{text}.{fraction}Z" if fraction else f"{text}Z"
