"""
Check session tokens as coderd/httpmw/apikey.go does, with its exact 401 answers.

The token is read, in Coder's order (``APITokenFromRequest``), from the
``coder_session_token`` cookie, the ``coder_session_token`` query parameter,
then the ``Coder-Session-Token`` header. Coder's tokens are ``<10>-<22>``
characters; a generated token has that shape, so a wrong one gets the same
detail Coder would give.
"""

from __future__ import annotations

import hmac
import secrets
import string

from aiohttp import web

from devtools.fake_coder import wire

_ALPHABET = string.ascii_letters + string.digits
_ID_LEN, _SECRET_LEN = 10, 22


def generate() -> str:
    """
    Return a random token shaped like Coder's: a 10-character id, a dash, a 22-character secret.
    """
    key_id = "".join(secrets.choice(_ALPHABET) for _ in range(_ID_LEN))
    secret = "".join(secrets.choice(_ALPHABET) for _ in range(_SECRET_LEN))
    return f"{key_id}-{secret}"


def from_request(request: web.Request) -> str:
    """
    Return the token a request carries, or "" when it carries none.
    """
    return (
        request.cookies.get(wire.SESSION_COOKIE)
        or request.query.get(wire.SESSION_COOKIE)
        or request.headers.get(wire.SESSION_HEADER)
        or ""
    )


def check(request: web.Request, expected: str) -> web.Response | None:
    """
    Return Coder's 401 answer when the request's token is missing or wrong, else None.
    """
    given = from_request(request)
    if given and hmac.compare_digest(given.encode(), expected.encode()):
        return None
    parts = given.split("-")
    key_id, secret = (*parts, "", "")[:2]
    bad_format = "Invalid API key format: "
    checks = (
        (not given, f'Cookie "{wire.SESSION_COOKIE}" or query parameter must be provided.'),
        (
            len(parts) != 2,
            f"{bad_format}incorrect amount of API key parts, expected 2 got {len(parts)}",
        ),
        (
            len(key_id) != _ID_LEN,
            f"{bad_format}invalid API key ID length, expected {_ID_LEN} got {len(key_id)}",
        ),
        (
            len(secret) != _SECRET_LEN,
            f"{bad_format}invalid API key secret length, expected {_SECRET_LEN} got {len(secret)}",
        ),
        (key_id != expected.split("-", maxsplit=1)[0], "API key is invalid."),
    )
    detail = next((text for failed, text in checks if failed), "API key secret is invalid.")
    return wire.respond(401, wire.SIGNED_OUT, detail=detail)
