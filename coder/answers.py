"""
Read Coder's non-success answers into the project's errors, as codersdk ``ReadBodyAsError`` does.

Coder writes a ``codersdk.Response`` (codersdk/client.go): ``message``,
``detail`` and ``validations`` (omitempty). A body that is not JSON (a proxy's
page) keeps codersdk's reading: "unexpected non-JSON response" and the body,
clipped, as detail. Status decides the error: 429 and 5xx are
``CoderUnavailableError`` (with ``Retry-After``), 410 ``WorkspaceGoneError``,
other 4xx ``CoderRejectedError``.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import math
from datetime import UTC, datetime
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

from coder.errors import (
    CoderError,
    CoderProtocolError,
    CoderRejectedError,
    CoderUnavailableError,
    Validation,
    WorkspaceGoneError,
)


def retry_after_s(value: str | None) -> float | None:
    """
    Read a ``Retry-After`` header: delta seconds or an HTTP date; None when absent or unreadable.
    """
    if not value:
        return None
    with contextlib.suppress(ValueError):
        seconds = float(value)
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _clip(text: str, limit: int) -> str:
    return text[:limit] + ("..." if len(text) > limit else "")


def _response_fields(content_type: str, raw: bytes, status: int) -> tuple[str, str, list[Any]]:
    """
    Read a ``codersdk.Response`` out of an error body as codersdk ``ReadBodyAsError`` does.
    """
    text = raw.decode(errors="replace")
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        return f"unexpected non-JSON response {content_type!r}", _clip(text, 2048), []
    if not text.strip():
        return "empty response body", "", []
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return f"unreadable error body for status {status}", _clip(text, 1024), []
    message = body.get("message")
    detail = body.get("detail")
    validations = body.get("validations")
    if not isinstance(message, str) or not message:
        return (
            f"unexpected status code {status}, response has no message",
            _clip(text, 1024),
            [],
        )
    return (
        message,
        detail if isinstance(detail, str) else "",
        validations if isinstance(validations, list) else [],
    )


def error_for(status: int, headers: CIMultiDictProxy[str], raw: bytes) -> CoderError:
    """
    Turn a non-success answer into the project's error for its status.
    """
    message, detail, found = _response_fields(headers.get("Content-Type", ""), raw, status)
    if status == 429 or status >= 500:
        return CoderUnavailableError(
            message,
            status_code=status,
            retry_after_s=retry_after_s(headers.get("Retry-After")),
            detail=detail,
        )
    validations = [
        Validation(str(v.get("field", "")), str(v.get("detail", "")))
        for v in found
        if isinstance(v, dict)
    ]
    if status == 410:
        return WorkspaceGoneError(status, message, detail, validations)
    if 200 <= status < 300:
        return CoderProtocolError(f"Coder answered {status}, not the status codersdk expects")
    return CoderRejectedError(status, message, detail, validations)


def handshake_error(exc: aiohttp.WSServerHandshakeError) -> CoderError:
    """
    Turn a refused ``watch-ws`` upgrade into the project's error (aiohttp drops the body).
    """
    status = exc.status
    message = f"Coder refused the watch-ws upgrade with status {status}"
    if status == 429 or status >= 500:
        header = exc.headers.get("Retry-After") if exc.headers is not None else None
        return CoderUnavailableError(
            message, status_code=status, retry_after_s=retry_after_s(header)
        )
    if status == 410:
        return WorkspaceGoneError(status, message)
    if 400 <= status < 500:
        return CoderRejectedError(status, message)
    return CoderProtocolError(message)
