"""PostgreSQL access bound to one service's schema, with outages told apart from bugs."""

from __future__ import annotations

import asyncio
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


def _gone(conn: asyncpg.Connection) -> bool:
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:
        return True  # the pool has taken it back: it closed under its holder


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


async def connect(dsn: str, schema: str, *, timeout: float, command_timeout: float | None = None,
                  plan_each_time: bool = False) -> asyncpg.Connection:
    settings = server_settings(schema)
    if plan_each_time:
        # For a queue table, empty one moment and thousands of rows the next: a plan cached while it
        # was empty reads the whole table on every statement once it has grown.
        settings["plan_cache_mode"] = "force_custom_plan"
    return await asyncpg.connect(dsn, timeout=timeout, command_timeout=command_timeout, server_settings=settings)


# Session-level, keyed by schema and name: one holder per service and purpose.
TRY_LOCK = "SELECT pg_try_advisory_lock(hashtext(current_schema()), hashtext($1))"


async def lock_holder(dsn: str, schema: str, name: str, *, timeout: float) -> asyncpg.Connection | None:
    """A connection of its own holding the advisory lock `name`, or None while another holds it.
    The lock lives as long as the connection: a holder that dies frees it for the next."""
    conn = await connect(dsn, schema, timeout=timeout)
    try:
        if await conn.fetchval(TRY_LOCK, name):
            return conn
        await conn.close()
        return None
    except BaseException:
        conn.terminate()
        raise


async def let_go(conn: asyncpg.Connection) -> None:
    """Close a lock holder, and with it the lock; cut it if it does not close in time."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.close(), timeout=2)
    if not conn.is_closed():
        conn.terminate()


@contextlib.asynccontextmanager
async def connection(pool: asyncpg.Pool, *, acquire_timeout: float = 10.0,
                     transaction: bool = False) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection, in one transaction if asked; an unreachable database surfaces as
    DatabaseUnavailable. Without a transaction each statement commits on its own."""
    try:
        conn = await pool.acquire(timeout=acquire_timeout)
    except (*CONNECTION_ERRORS, OSError, TimeoutError) as exc:
        raise DatabaseUnavailable(str(exc) or type(exc).__name__) from exc
    try:
        async with outages(conn), conn.transaction() if transaction else contextlib.nullcontext():
            yield conn
    finally:
        await pool.release(conn)


@contextlib.asynccontextmanager
async def outages(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """Work on a connection the caller holds: losing it surfaces as DatabaseUnavailable."""
    try:
        yield
    except Exception as exc:
        # A connection lost mid-transaction mostly surfaces as asyncpg's InterfaceError (on the next
        # statement, or from the rollback), not as a connection error: a gone connection is the outage.
        if isinstance(exc, CONNECTION_ERRORS) or (isinstance(exc, asyncpg.InterfaceError) and _gone(conn)):
            raise DatabaseUnavailable(str(exc) or type(exc).__name__) from exc
        raise


def transaction(pool: asyncpg.Pool, *, acquire_timeout: float = 10.0
                ) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
    """One transaction; an unreachable database surfaces as DatabaseUnavailable."""
    return connection(pool, acquire_timeout=acquire_timeout, transaction=True)
