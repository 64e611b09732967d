"""
Apply the numbered migrations of ``storage/sql/migrations``, once each.

Safe to run from several instances at once: a transaction-level advisory
lock serialises them and each file is applied in the same transaction that
records it.
"""

from __future__ import annotations

from importlib import resources

import asyncpg

from storage import errors

_LOCK_KEY = 0x776F726B  # "work": any constant shared by every instance


def migrations() -> list[tuple[str, str]]:
    """
    Return (version, SQL) of every migration file, in order.
    """
    folder = resources.files("storage").joinpath("sql", "migrations")
    files = sorted(f.name for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), folder.joinpath(name).read_text()) for name in files]


async def migrate(dsn: str, settings_rows: dict[str, float] | None = None) -> list[str]:
    """
    Apply the migrations not yet applied; return the versions applied now.
    """
    with errors.translated():
        conn = await asyncpg.connect(dsn)
        try:
            return await _migrate(conn, settings_rows or {})
        finally:
            await conn.close()


async def _migrate(conn: asyncpg.Connection, settings_rows: dict[str, float]) -> list[str]:
    applied_now = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, text in migrations():
            if version in done:
                continue
            await conn.execute(text)
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            applied_now.append(version)
        if settings_rows:
            await record_settings(conn, settings_rows)
    return applied_now


async def record_settings(conn: asyncpg.Connection | asyncpg.Pool, rows: dict[str, float]) -> None:
    """
    Keep ``workspaced_settings`` (read by the dashboard views) equal to the running settings.
    """
    with errors.translated():
        await conn.executemany(
            "INSERT INTO workspaced_settings (name, value) VALUES ($1, $2) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            list(rows.items()),
        )
