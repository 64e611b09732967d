"""
Validate a create_workspace tool call's template_id as Coder does (spec R1).
"""

from __future__ import annotations

import string

from statemachine import results

_HEX = frozenset(string.hexdigits)
_DASHES = (8, 13, 18, 23)
_URN_PREFIX = "urn:uuid:"


class InvalidArgumentError(ValueError):
    """
    Raise with the exact error text the tool result must carry.
    """


def _go_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parse_uuid(text: str) -> str:
    """
    Parse like Go's uuid.Parse and return the canonical form, or raise with its message.
    """
    size = len(text.encode())
    if size == 45:
        if text[:9].lower() != _URN_PREFIX:
            raise InvalidArgumentError(f"invalid urn prefix: {_go_quote(text[:9])}")
        text = text[9:]
    elif size == 38:
        text = text[1:-1]
    elif size == 32:
        if not set(text) <= _HEX:
            raise InvalidArgumentError("invalid UUID format")
        text = f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
    elif size != 36:
        raise InvalidArgumentError(f"invalid UUID length: {size}")
    if not text.isascii():  # Go checks bytes: any non-ASCII byte is a bad hex digit
        raise InvalidArgumentError("invalid UUID format")
    if any(text[i] != "-" for i in _DASHES):
        raise InvalidArgumentError("invalid UUID format")
    if not set(text.replace("-", "")) <= _HEX or len(text) != 36:
        raise InvalidArgumentError("invalid UUID format")
    return text.lower()


def template_id(raw: object) -> str:
    """
    Return the canonical template id, or raise ``InvalidArgumentError`` with R1's message.
    """
    if raw is not None and not isinstance(raw, str):
        raise InvalidArgumentError("invalid template_id: must be a string")
    text = (raw or "").strip()
    if not text:
        raise InvalidArgumentError(results.TEMPLATE_REQUIRED)
    try:
        return _parse_uuid(text)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"invalid template_id: {exc}") from None
