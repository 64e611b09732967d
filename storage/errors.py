"""
Translate asyncpg's exceptions into the project's own, at the boundary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import asyncpg


class StorageError(Exception):
    """
    Raise when PostgreSQL fails; callers never see an asyncpg type.
    """


class StorageUnavailableError(StorageError):
    """
    Raise when PostgreSQL cannot be reached; retrying later may work.
    """


class ConflictError(StorageError):
    """
    Raise when a transaction lost a race (deadlock, serialization); retry it.
    """


# SQLSTATEs that say "not now" rather than "never": connection exceptions,
# a read-only transaction (a failover whose DNS still names the old writer),
# insufficient resources, operator intervention (shutdown, query canceled by a
# timeout), database not accepting connections, lock not available, and idle
# or in-transaction session timeouts.
_UNAVAILABLE_CLASSES = ("08", "25006", "53", "57", "55000", "55P03", "25P0")

# What asyncpg says, in InterfaceError or InternalClientError, when the
# connection went away under it; there is no dedicated type for these.
_CLOSED_MESSAGES = ("connection is closed", "connection was closed", 'the "failed" state')

_FOREIGN = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


@contextlib.contextmanager
def translated(conn: Any = None) -> Iterator[None]:
    """
    Re-raise asyncpg and connection errors as ``StorageError`` subclasses.

    An error is *unavailable* when it, or any error in its cause and context
    chain, says the connection is gone or PostgreSQL cannot serve now, or when
    ``conn`` (the connection the block used, if given) is closed: asyncpg
    reports a backend that died mid-transaction with whichever error the next
    call meets (``InterfaceError``, ``InternalClientError``), and its
    ``Transaction.__aexit__`` replaces the first error with its own.
    """
    try:
        yield
    except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
        raise ConflictError(str(exc)) from exc
    except _FOREIGN as exc:
        text = f"{type(exc).__name__}: {exc}" if isinstance(exc, asyncpg.PostgresError) else ""
        text = text or str(exc) or type(exc).__name__
        if _unavailable(exc) or (conn is not None and is_closed(conn)):
            raise StorageUnavailableError(text) from exc
        raise StorageError(text) from exc


def is_closed(conn: Any) -> bool:
    """
    Tell whether ``conn`` can no longer be used: closed, or taken back by its pool.
    """
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        # A pool connection whose backend died is released by asyncpg itself;
        # its proxy then refuses every call, ``is_closed`` included.
        return True


def _unavailable(exc: BaseException) -> bool:
    seen: set[int] = set()
    chain: list[BaseException] = [exc]
    while chain:
        link = chain.pop()
        if id(link) in seen:
            continue
        seen.add(id(link))
        if _says_unavailable(link):
            return True
        chain += [e for e in (link.__cause__, link.__context__) if e is not None]
    return False


def _says_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, StorageUnavailableError | OSError | TimeoutError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return (exc.sqlstate or "").startswith(_UNAVAILABLE_CLASSES)
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.InternalClientError):
        return any(message in str(exc) for message in _CLOSED_MESSAGES)
    return False
