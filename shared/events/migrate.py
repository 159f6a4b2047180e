"""Plain SQL migrations per schema: the runtime's tables first, then the service's own."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

RUNTIME_MIGRATIONS = Path(__file__).parent / "migrations"
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def migration_files(service_migrations: Path | None) -> list[tuple[str, Path]]:
    """Every migration a schema needs, in order, named as recorded in schema_migrations."""
    files = [(f"runtime/{p.stem}", p) for p in sorted(RUNTIME_MIGRATIONS.glob("*.sql"))]
    if service_migrations is not None:
        files += [(p.stem, p) for p in sorted(service_migrations.glob("*.sql"))]
    return files


def _quoted(schema: str) -> str:
    if not _SCHEMA.match(schema):
        raise ValueError(f"invalid schema name {schema!r}")
    return f'"{schema}"'


async def migrate(conn: asyncpg.Connection, schema: str, files: list[tuple[str, Path]]) -> list[str]:
    """Apply what is missing, in one transaction; replicas starting together wait on a lock."""
    q = _quoted(schema)
    applied_now = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('wabus.migrate'), hashtext($1))", schema)
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {q}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {q}.schema_migrations"
            " (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        applied = {r["version"] for r in await conn.fetch(f"SELECT version FROM {q}.schema_migrations")}
        for version, path in files:
            if version in applied:
                continue
            await conn.execute(f"SET LOCAL search_path TO {q}")
            await conn.execute(path.read_text())
            await conn.execute(f"INSERT INTO {q}.schema_migrations (version) VALUES ($1)", version)
            applied_now.append(version)
    return applied_now


async def pending(conn: asyncpg.Connection, schema: str, files: list[tuple[str, Path]]) -> list[str]:
    q = _quoted(schema)
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{q}.schema_migrations")
    applied = set()
    if exists:
        applied = {r["version"] for r in await conn.fetch(f"SELECT version FROM {q}.schema_migrations")}
    return [version for version, _ in files if version not in applied]


async def ensure_database(dsn: str, *, timeout: float = 10.0) -> bool:
    """Create the database named in the DSN if it is missing; True when it was created."""
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    if not name:
        raise ValueError(f"the database URL names no database: {parts.scheme}://{parts.hostname}")
    maintenance = urlunsplit(parts._replace(path="/postgres"))
    conn = await asyncpg.connect(maintenance, timeout=timeout)
    try:
        if await conn.fetchval("SELECT true FROM pg_database WHERE datname = $1", name):
            return False
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            await conn.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.DuplicateDatabaseError:
            return False  # another process created it first
        return True
    finally:
        await conn.close()
