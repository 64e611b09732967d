"""
Compute SCRAM credentials from a password, so servers are never handed the password itself.

PostgreSQL takes a SCRAM-SHA-256 verifier in ``ALTER ROLE … PASSWORD``; Kafka's
storage formatter takes a salt and a salted password in ``--add-scram``. Both
are derived here (RFC 5802), so the plain password appears in no command
line, no SQL statement and no server log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import string

ITERATIONS = 4096  # the minimum Kafka accepts for SCRAM-SHA-512, PostgreSQL's default
_PRINTABLE = frozenset(string.printable) - frozenset(string.whitespace) | {" "}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def check_password(password: str) -> None:
    """
    Refuse a password SASLprep would change (non-ASCII or control characters).

    Clients normalise passwords with SASLprep; for printable ASCII that is the
    identity, so a credential derived here matches what any client sends. The
    message never contains the password.
    """
    if not password or not set(password) <= _PRINTABLE:
        msg = "a SCRAM password here must be non-empty printable ASCII"
        raise ValueError(msg)


def postgres_verifier(password: str, iterations: int = ITERATIONS) -> str:
    """
    Return the ``SCRAM-SHA-256$…`` verifier PostgreSQL stores for ``password``.
    """
    check_password(password)
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def kafka_credential(user: str, password: str, iterations: int = ITERATIONS) -> str:
    """
    Return the ``--add-scram`` argument of ``kafka-storage format`` for a SCRAM-SHA-512 user.
    """
    check_password(password)
    if not user or not set(user) <= set(string.ascii_letters + string.digits + "._-"):
        msg = "a Kafka SCRAM user name here must be letters, digits, '.', '_' or '-'"
        raise ValueError(msg)
    salt = os.urandom(32)
    salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return (
        f'SCRAM-SHA-512=[name={user},iterations={iterations},salt="{_b64(salt)}",'
        f'saltedpassword="{_b64(salted)}"]'
    )
