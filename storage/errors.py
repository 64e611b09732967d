"""
Translate asyncpg's exceptions into the project's own, at the boundary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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
# insufficient resources, operator intervention (shutdown, query canceled by a
# timeout), database not accepting connections, lock not available, and idle
# or in-transaction session timeouts.
_UNAVAILABLE_CLASSES = ("08", "53", "57", "55000", "55P03", "25P0")


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """
    Re-raise asyncpg and connection errors as ``StorageError`` subclasses.
    """
    try:
        yield
    except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
        raise ConflictError(str(exc)) from exc
    except asyncpg.PostgresError as exc:
        if (exc.sqlstate or "").startswith(_UNAVAILABLE_CLASSES):
            raise StorageUnavailableError(f"{type(exc).__name__}: {exc}") from exc
        raise StorageError(f"{type(exc).__name__}: {exc}") from exc
    except (OSError, TimeoutError, asyncpg.ConnectionDoesNotExistError) as exc:
        raise StorageUnavailableError(str(exc) or type(exc).__name__) from exc
    except asyncpg.InterfaceError as exc:
        raise StorageError(str(exc)) from exc
