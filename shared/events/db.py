"""PostgreSQL access bound to one service's schema, with outages told apart from bugs."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg

from .errors import DatabaseUnavailable

# Errors that mean "PostgreSQL is not there right now", not "this work is wrong".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.exceptions.OperatorInterventionError,
    ConnectionError,
)


def server_settings(schema: str) -> dict[str, str]:
    # Each service sees only its own schema, so SQL never names one.
    return {"search_path": schema, "application_name": f"wabus-{schema}"}


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pooled connections hold no session state (no LISTEN, locks or SETs: those get connections of
    their own), so the reset query asyncpg runs on every release would be a round trip for nothing."""


async def create_pool(dsn: str, schema: str, *, min_size: int, max_size: int,
                      command_timeout: float, connect_timeout: float) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, command_timeout=command_timeout,
        timeout=connect_timeout, server_settings=server_settings(schema), reset=_keep_session,
    )


async def connect(dsn: str, schema: str, *, timeout: float) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, timeout=timeout, server_settings=server_settings(schema))


@contextlib.asynccontextmanager
async def transaction(pool: asyncpg.Pool, *, acquire_timeout: float = 10.0) -> AsyncIterator[asyncpg.Connection]:
    """One transaction; an unreachable database surfaces as DatabaseUnavailable."""
    try:
        conn = await pool.acquire(timeout=acquire_timeout)
    except (*CONNECTION_ERRORS, OSError, TimeoutError) as exc:
        raise DatabaseUnavailable(str(exc) or type(exc).__name__) from exc
    try:
        async with conn.transaction():
            yield conn
    except CONNECTION_ERRORS as exc:
        raise DatabaseUnavailable(str(exc) or type(exc).__name__) from exc
    finally:
        await pool.release(conn)
