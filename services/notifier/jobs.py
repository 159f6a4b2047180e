"""The notifier's periodic work."""

from datetime import timedelta

import asyncpg

from shared.events.jobs import Tick

PRUNE_IDEMPOTENCY_KEYS = "DELETE FROM idempotency_keys WHERE created_at < $1"


def prune_idempotency_keys(retention_h: float):
    async def prune_idempotency_keys(tick: Tick, conn: asyncpg.Connection) -> list:
        """Forget keys once a client no longer retries with them: after that the same key is a new request."""
        await conn.execute(PRUNE_IDEMPOTENCY_KEYS, tick.at - timedelta(hours=retention_h))
        return []

    return prune_idempotency_keys
